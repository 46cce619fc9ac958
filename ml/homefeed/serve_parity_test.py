"""Train/serve parity: the homefeed model trained by the build (:model_export), bundled (:bundle) and served
over gRPC returns what the trainer's in-memory model returned for the golden inputs.

golden.npz's outputs were computed by the trainer process with its in-memory model at export time; here they
are compared with what tritonclient gets back from the server, as one batch and as single rows that the
server's dynamic batcher regroups, for each artifact of the bundle: TorchScript (the default) and ONNX
(`tools/bazel run //ml/homefeed:serve -- --runtime onnx`, ONNX Runtime).
"""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton

from ml.serving import bundle, server

BUNDLE = Path("ml/homefeed/bundle")
PLATFORMS = {"torchscript": "pytorch_libtorch", "onnx": "onnxruntime_onnx"}


def request(client, arrays, names, types):
    inputs = []
    for name, array, dtype in zip(names, arrays, types, strict=True):
        tensor = triton.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(np.ascontiguousarray(array))
        inputs.append(tensor)
    return client.infer("homefeed", inputs)


# Same batch through TorchScript: the same bytes as the trainer's eager model. ONNX Runtime fuses and orders
# kernels its own way, so its outputs match to float rounding (atol), not bit for bit.
@pytest.mark.parametrize("runtime,atol", [("torchscript", 0.0), ("onnx", 1e-5)])
def test_outputs_over_grpc_equal_the_trainers_in_memory_model(runtime, atol):
    b = bundle.verify(BUNDLE)
    assert b.manifest["built_by"] == "//ml/homefeed:bundle"
    assert set(b.manifest["artifacts"]) == {"torchscript", "onnx"} and b.manifest["artifact_format"] == "torchscript"
    inputs, expected = bundle.golden_arrays(b)
    names = [t["name"] for t in b.signature["inputs"]]
    types = [server.TORCH_TO_OIP[t["dtype"]] for t in b.signature["inputs"]]
    outputs = [t["name"] for t in b.signature["outputs"]]
    srv = server.start(bundles_to_load=[BUNDLE], port=0, metrics_port=None, artifact_format=runtime)
    try:
        assert srv.repository.get("homefeed").runtime.platform == PLATFORMS[runtime]
        with triton.InferenceServerClient(f"127.0.0.1:{srv.port}") as client:
            whole = request(client, inputs, names, types)
            for name, want in zip(outputs, expected, strict=True):
                np.testing.assert_allclose(whole.as_numpy(name), want, rtol=0, atol=atol)

        def single(row):
            with triton.InferenceServerClient(f"127.0.0.1:{srv.port}") as client:
                return request(client, [a[row:row + 1] for a in inputs], names, types)

        with ThreadPoolExecutor(len(inputs[0])) as pool:
            rows = list(pool.map(single, range(len(inputs[0]))))
        for name, want in zip(outputs, expected, strict=True):
            got = np.concatenate([r.as_numpy(name) for r in rows])
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    finally:
        srv.stop(1)
