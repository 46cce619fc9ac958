"""The model server on the accelerator (`--device cuda`), driven by the real tritonclient.grpc client.

`gpu_test` runs on CUDA under --config=gpu; `gpu_test_cpu` runs the same file with the server on CPU in the
default suite, so the device plumbing (load, golden replay, batching, per-instance streams) is one code path.
Both runtimes that can use the GPU run it: TorchScript, and the bundle's ONNX artifact on ONNX Runtime
(`--runtime onnx`: the CUDA execution provider of the CUDA lock's onnxruntime-gpu; the CPU one on CPU), each
replayed against the bundle's golden outputs when it loads.
"""

import os

import pytest
import torch
import tritonclient.grpc as triton
from tritonclient.grpc import model_config_pb2

from ml.serving import server
from ml.serving.testing import check_concurrent_requests_batch, make_bundle

DEVICE = os.environ.get("MLENV_TEST_DEVICE", "cuda")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """One bundle with both artifacts (TorchScript and ONNX), written and golden-checked on the CPU."""
    return make_bundle(tmp_path_factory.mktemp("repo"), onnx=True, max_queue_delay_us=50_000)


@pytest.fixture(params=[("torchscript", 1), ("torchscript", 2), ("onnx", 1), ("onnx", 2)],
                ids=["torchscript-1-instance", "torchscript-2-instances", "onnx-1-instance", "onnx-2-instances"])
def served(bundle, request):
    runtime, instances = request.param
    srv = server.start(bundles_to_load=[bundle], port=0, metrics_port=0, device=DEVICE, instances=instances,
                       artifact_format=runtime)
    yield srv
    srv.stop(1)


def test_the_model_lives_on_the_device(served):
    model = served.repository.get("tiny")
    assert served.repository.device.type == torch.device(DEVICE).type
    if type(model.runtime).__name__ == "OnnxModel":
        want = "CUDAExecutionProvider" if torch.device(DEVICE).type == "cuda" else "CPUExecutionProvider"
        assert model.module.get_providers()[0] == want, model.module.get_providers()
    else:
        assert {p.device.type for p in model.module.parameters()} == {torch.device(DEVICE).type}
    with triton.InferenceServerClient(f"127.0.0.1:{served.port}") as client:
        [group] = client.get_model_config("tiny").config.instance_group
    kind = "KIND_GPU" if torch.device(DEVICE).type == "cuda" else "KIND_CPU"
    assert group.kind == model_config_pb2.ModelInstanceGroup.Kind.Value(kind)
    assert group.count == served.repository.get("tiny").batcher.instances
    assert list(group.gpus) == ([served.repository.device.index] if kind == "KIND_GPU" else [])


def test_concurrent_requests_batch_on_the_device_and_each_gets_its_own_rows(served):
    check_concurrent_requests_batch(served.port, served.metrics_port, where=f" on {DEVICE}")
