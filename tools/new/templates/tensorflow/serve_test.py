"""Train/serve parity: the Keras model trained by the build (:model_export), bundled (:bundle, a SavedModel) and
served over gRPC (the Open Inference Protocol, through the real tritonclient) returns what the trainer's
in-memory model returned for the golden inputs, as one batch and as single rows the server's batcher regroups.

The tolerance is the one the export itself checks the reloaded SavedModel against (ATOL): the served graph is
the SavedModel, not the eager Keras model, so float sums may round differently.
"""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton

from ml.serving import bundle, server

BUNDLE = Path("ml/__project__/bundle")
ATOL = 1e-4


def request(client, arrays, names, types):
    inputs = []
    for name, array, dtype in zip(names, arrays, types, strict=True):
        tensor = triton.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(np.ascontiguousarray(array))
        inputs.append(tensor)
    return client.infer("__project__", inputs)


def test_served_outputs_equal_the_trainers_in_memory_model():
    b = bundle.verify(BUNDLE)
    assert b.manifest["built_by"] == "//ml/__project__:bundle"
    assert (b.manifest["framework"], b.manifest["artifact_format"]) == ("tensorflow", "tf_saved_model")
    inputs, expected = bundle.golden_arrays(b)
    names = [t["name"] for t in b.signature["inputs"]]
    types = [server.TORCH_TO_OIP[t["dtype"]] for t in b.signature["inputs"]]
    outputs = [t["name"] for t in b.signature["outputs"]]
    assert sorted(outputs) == ["logit", "prob"]
    srv = server.start(bundles_to_load=[BUNDLE], port=0, metrics_port=None)
    try:
        with triton.InferenceServerClient(f"127.0.0.1:{srv.port}") as client:
            assert client.get_model_metadata("__project__").platform == "tensorflow_savedmodel"
            whole = request(client, inputs, names, types)
        for name, want in zip(outputs, expected, strict=True):
            got = whole.as_numpy(name)
            assert got.dtype == np.float32 and got.shape == want.shape, (name, got.dtype, got.shape)
            np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)

        def single(row):
            with triton.InferenceServerClient(f"127.0.0.1:{srv.port}") as client:
                return request(client, [a[row:row + 1] for a in inputs], names, types)

        with ThreadPoolExecutor(4) as pool:
            rows = list(pool.map(single, range(len(inputs[0]))))
        for name, want in zip(outputs, expected, strict=True):
            np.testing.assert_allclose(np.concatenate([r.as_numpy(name) for r in rows]), want, rtol=0, atol=ATOL)
    finally:
        srv.stop(1)
