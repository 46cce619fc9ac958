"""Train/serve parity: the retrieval model trained by the build (:model_export), bundled (:bundle, a SavedModel)
and served over gRPC by the same server as homefeed returns what the trainer's in-memory Keras model returned.

golden.npz's outputs were computed in the trainer process at export time; here tritonclient asks the server for
them, as one batch and as single rows that the dynamic batcher regroups. Top-K ids are compared exactly except
where two candidates' golden scores tie within the tolerance (their order is then a rounding matter).
"""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton

from ml.serving import bundle, server

BUNDLE = Path("ml/retrieval/bundle")
ATOL = 1e-4


def request(client, arrays, names, types):
    inputs = []
    for name, array, dtype in zip(names, arrays, types, strict=True):
        tensor = triton.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(np.ascontiguousarray(array))
        inputs.append(tensor)
    return client.infer("retrieval", inputs)


def assert_same_top_items(got_items, want_items, want_scores):
    differ = got_items != want_items
    if not differ.any():
        return
    # a differing position is acceptable only inside a run of (near-)tied scores
    gaps = np.abs(np.diff(want_scores, axis=1))
    tied = np.zeros_like(differ)
    tied[:, 1:] |= gaps <= ATOL
    tied[:, :-1] |= gaps <= ATOL
    bad = differ & ~tied
    assert not bad.any(), f"top_items differ at {np.argwhere(bad)[:5].tolist()} where scores do not tie"


def test_outputs_over_grpc_equal_the_trainers_in_memory_model():
    b = bundle.verify(BUNDLE)
    assert b.manifest["built_by"] == "//ml/retrieval:bundle"
    assert (b.manifest["framework"], b.manifest["artifact_format"]) == ("tensorflow", "tf_saved_model")
    inputs, expected = bundle.golden_arrays(b)
    names = [t["name"] for t in b.signature["inputs"]]
    types = [server.TORCH_TO_OIP[t["dtype"]] for t in b.signature["inputs"]]
    outputs = [t["name"] for t in b.signature["outputs"]]
    assert sorted(outputs) == ["query_embedding", "top_items", "top_scores"]
    want = dict(zip(outputs, expected, strict=True))
    srv = server.start(bundles_to_load=[BUNDLE], port=0, metrics_port=None)
    try:
        with triton.InferenceServerClient(f"127.0.0.1:{srv.port}") as client:
            meta = client.get_model_metadata("retrieval")
            assert meta.platform == "tensorflow_savedmodel", meta.platform
            whole = request(client, inputs, names, types)
            np.testing.assert_allclose(whole.as_numpy("query_embedding"), want["query_embedding"], rtol=0, atol=ATOL)
            np.testing.assert_allclose(whole.as_numpy("top_scores"), want["top_scores"], rtol=0, atol=ATOL)
            assert_same_top_items(whole.as_numpy("top_items"), want["top_items"], want["top_scores"])
            assert whole.as_numpy("top_items").dtype == np.int64

        def single(row):
            with triton.InferenceServerClient(f"127.0.0.1:{srv.port}") as client:
                return request(client, [a[row:row + 1] for a in inputs], names, types)

        with ThreadPoolExecutor(len(inputs[0])) as pool:
            rows = list(pool.map(single, range(len(inputs[0]))))
        got = {name: np.concatenate([r.as_numpy(name) for r in rows]) for name in outputs}
        np.testing.assert_allclose(got["query_embedding"], want["query_embedding"], rtol=0, atol=ATOL)
        np.testing.assert_allclose(got["top_scores"], want["top_scores"], rtol=0, atol=ATOL)
        assert_same_top_items(got["top_items"], want["top_items"], want["top_scores"])
    finally:
        srv.stop(1)
