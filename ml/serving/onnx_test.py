"""The server on a bundle's ONNX artifact (--runtime onnx): ONNX Runtime behind the same protocol, batcher and
load-time checks as TorchScript, over the real tritonclient.grpc client on loopback."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import model_config_pb2

from ml.serving import server
from ml.serving.testing import check_concurrent_requests_batch, make_bundle


@pytest.fixture(scope="module")
def onnx_bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("repo"), onnx=True, max_queue_delay_us=50_000)


@pytest.mark.parametrize("instances", [1, 2])
def test_the_onnx_artifact_serves_batches_with_onnx_runtime(onnx_bundle, instances):
    srv = server.start(bundles_to_load=[onnx_bundle], port=0, metrics_port=0, artifact_format="onnx",
                       instances=instances, threads=1)
    try:
        loaded = srv.repository.get("tiny")
        assert type(loaded.runtime).__name__ == "OnnxModel"
        assert type(loaded.module).__name__ == "InferenceSession"
        with triton.InferenceServerClient(f"127.0.0.1:{srv.port}") as client:
            assert client.get_model_metadata("tiny").platform == "onnxruntime_onnx"
            config = client.get_model_config("tiny").config
            assert config.platform == "onnxruntime_onnx"
            [group] = config.instance_group
            assert (group.kind, group.count) == (model_config_pb2.ModelInstanceGroup.KIND_CPU, instances)

        check_concurrent_requests_batch(srv.port, srv.metrics_port)
    finally:
        srv.stop(1)
    assert loaded.batcher.alive_instances() == 0


SERVE_AND_REPORT = """
import sys
from ml.serving import server
srv = server.start(bundles_to_load=[sys.argv[1]], port=0, metrics_port=None, artifact_format=sys.argv[2])
print(sorted(m for m in ("torch", "onnxruntime") if m in sys.modules))
srv.stop(1)
"""


@pytest.mark.parametrize("runtime,imported", [("onnx", ["onnxruntime"]), ("torchscript", ["torch"])])
def test_a_server_imports_only_the_runtime_it_serves(onnx_bundle, runtime, imported):
    proc = subprocess.run([sys.executable, *(["-S"] if sys.flags.no_site else []), "-c", SERVE_AND_REPORT,
                           str(onnx_bundle), runtime], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == str(imported), proc.stderr


def _serve_cli(*args):
    return subprocess.run([sys.executable, *(["-S"] if sys.flags.no_site else []), "-m", "ml.serving.server",
                           "--port", "0", "--metrics-port", "-1", *args], capture_output=True, text=True, timeout=120)


def test_the_cli_refuses_an_artifact_the_bundle_lacks_or_a_device_onnx_runtime_cannot_use(onnx_bundle, tmp_path):
    plain = make_bundle(tmp_path / "repo")  # TorchScript only
    proc = _serve_cli("--bundle", str(plain), "--runtime", "onnx")
    assert proc.returncode == 1 and "no onnx artifact in this bundle (it carries torchscript)" in proc.stderr, proc.stderr
    proc = _serve_cli("--bundle", str(onnx_bundle), "--runtime", "tensorrt")
    assert proc.returncode == 2 and "invalid choice: 'tensorrt'" in proc.stderr, proc.stderr
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        proc = _serve_cli("--bundle", str(onnx_bundle), "--runtime", "onnx", "--device", "cuda")
        assert proc.returncode == 1 and "has no CUDAExecutionProvider" in proc.stderr, proc.stderr


def test_the_chosen_artifact_is_replayed_against_the_golden_outputs_on_load(onnx_bundle, tmp_path):
    import json
    import shutil

    from ml.serving import bundle

    broken = shutil.copytree(onnx_bundle, tmp_path / "broken")
    golden = broken / "model/golden.npz"
    with np.load(golden) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["output.prob"] = arrays["output.prob"] + 0.5
    np.savez(golden, **arrays)
    manifest = json.loads((broken / "bundle.json").read_text())
    manifest["files"]["model/golden.npz"] = bundle._sha256(golden)
    (broken / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(bundle.BundleError, match="output prob differs from the golden outputs by 0.5"):
        server.start(bundles_to_load=[broken], port=0, metrics_port=None, artifact_format="onnx")


def test_onnx_runtime_is_told_not_to_send_telemetry_before_it_loads():
    # ONNX Runtime 1.32 on Linux resolves its telemetry collector's host unless ORT_DISABLE_TELEMETRY is set
    # when it loads (measured with strace): the runtime module sets it first, and an explicit setting wins.
    code = ("import os, sys; import ml.serving.runtimes.onnx; "
            "print(os.environ.get('ORT_DISABLE_TELEMETRY'), 'onnxruntime' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    out = subprocess.run([sys.executable, *(["-S"] if sys.flags.no_site else []), "-c", code], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["1", "True"], out.stderr[-2000:]
    env["ORT_DISABLE_TELEMETRY"] = "0"
    out = subprocess.run([sys.executable, *(["-S"] if sys.flags.no_site else []), "-c", code], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["0", "True"], out.stderr[-2000:]


FELL_BACK = """
import sys
import onnxruntime as ort
from ml.serving.runtimes import Device, LoadError, onnx
if "CUDAExecutionProvider" not in ort.get_available_providers():  # the CPU build: say CUDA exists, as -gpu does
    ort.get_available_providers = lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
try:
    onnx.load(open(sys.argv[1], "rb").read(), "onnx", Device("cuda", 0), threads=1)
except LoadError as exc:
    print(exc)
"""


def test_a_session_that_fell_back_to_the_cpu_is_refused_when_cuda_was_asked(onnx_bundle):
    """ONNX Runtime only warns when its CUDA provider cannot start and runs on the CPU: --device cuda must
    fail at load instead. Both builds fall back here: the CPU one (told CUDA exists) and onnxruntime-gpu with
    every GPU hidden (CUDA_VISIBLE_DEVICES empty)."""
    [model] = list(onnx_bundle.glob("**/*.onnx"))
    proc = subprocess.run([sys.executable, *(["-S"] if sys.flags.no_site else []), "-c", FELL_BACK, str(model)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr
    assert "--device cuda:0: onnxruntime" in proc.stdout, proc.stdout + proc.stderr
    assert "could not start its CUDA execution provider and fell back to CPUExecutionProvider" in proc.stdout
    assert "toolchains.cuda.gate" in proc.stdout
