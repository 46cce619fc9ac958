"""The ONNX Runtime runtime: ONNX artifacts, on the CPU execution provider or (onnxruntime-gpu) the CUDA one.

One InferenceSession per instance: ONNX Runtime may run one session from several threads, but they would
share the session's intra-op thread pool, so N instances would not use N x threads cores. Each model thread
builds its own session when it starts (`instance()`; the first one takes the session built at load, which
the golden check ran); calls from other threads use that first session too. Every session reads the same verified bytes.

On cuda (the CUDA lock's onnxruntime-gpu, built for CUDA 13 like its torch: docs/gpu.md), the CUDA libraries
come from the environment's nvidia-* wheels, loaded by onnxruntime's own preload_dlls (this runtime does not
import torch, which would otherwise load them). ONNX Runtime falls back to the CPU, with only a warning, when
its CUDA provider cannot start (a missing library, no driver): a session that did is refused at load, so a
server asked for cuda never serves on the CPU in silence.

On cuda, IO binding feeds the inputs from host memory and binds the outputs to host memory, so ONNX Runtime
copies each once, with no extra staging copy through a device buffer we would then copy back.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading

import numpy as np

# ONNX Runtime (1.32, Linux) sends usage telemetry to Microsoft unless this is set before it loads: measured
# with strace, a session that lives 25 s resolves the collector's host name (DNS to the machine's resolver).
# A model server must not phone home, and tests may talk only to loopback. Only an explicit setting wins.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
import onnxruntime as ort  # noqa: E402 - after the telemetry switch above

from ml.serving.runtimes import Device, LoadError

__all__ = ["OnnxModel", "load", "providers"]


def providers(device: Device) -> list:
    """The execution providers for `device`, checked now: a server must not start on one it cannot use."""
    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise ValueError(f"--device {device}: onnxruntime {ort.__version__} has no CUDAExecutionProvider (it has "
                         f"{', '.join(available)}): this is the CPU build; serve ONNX on --device cpu, or serve "
                         f"the bundle's TorchScript artifact on the GPU (--runtime torchscript)")
    return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]


_preload_report: str | None = None


def _preload_cuda_libraries() -> str:
    """Loads the CUDA and cuDNN libraries the CUDA provider links (libcudart.so.13, libcublasLt.so.13, ...)
    from the nvidia-* wheels beside onnxruntime, once; returns what onnxruntime reported (it prints each
    library it could not load), for the error a session without its CUDA provider raises."""
    global _preload_report
    if _preload_report is None:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            if hasattr(ort, "preload_dlls"):
                ort.preload_dlls(directory="")  # "": the nvidia site packages, then the default search path
        _preload_report = out.getvalue().strip()
    return _preload_report


class OnnxModel:
    platform = "onnxruntime_onnx"
    metadata_platform = "onnxruntime_onnx"

    def __init__(self, data: bytes, device: Device, threads: int | None) -> None:
        self.device, self._data, self._threads = device, data, threads
        self._providers = providers(device)
        self._preload = _preload_cuda_libraries() if device.type == "cuda" else ""
        self._local = threading.local()
        self._first_taken = threading.Lock()  # the first instance serves with self.module, the others build theirs
        self.module = self._session()  # the first session: checks the model loads, serves other threads
        self._inputs = [i.name for i in self.module.get_inputs()]
        self._outputs = [o.name for o in self.module.get_outputs()]

    def _session(self) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        threads = self._threads or _default_threads()
        options.intra_op_num_threads = threads
        if threads == 1:
            # One thread: no pool to keep spinning between runs, which would only burn a core of the machine.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(self._data, sess_options=options, providers=self._providers)
        if self.device.type == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
            why = f" onnxruntime said: {self._preload}." if self._preload else ""
            raise LoadError(f"--device {self.device}: onnxruntime {ort.__version__} could not start its CUDA "
                            f"execution provider and fell back to {', '.join(session.get_providers())}.{why} Check "
                            f"the driver and the CUDA lock's install with `python -m toolchains.cuda.gate`, or serve "
                            f"on --device cpu")
        return session

    def follow_signature(self, signature: dict) -> None:
        """Feed and fetch by bundle.json's names, in its order (requests arrive in signature order, which
        need not be the graph's); a graph whose names disagree with bundle.json is refused."""
        for kind, have in (("inputs", self._inputs), ("outputs", self._outputs)):
            want = [t["name"] for t in signature[kind]]
            if sorted(want) != sorted(have):
                raise LoadError(f"the ONNX graph's {kind} {have} disagree with bundle.json's {want}: rebuild the "
                                f"bundle from one export")
        self._inputs = [t["name"] for t in signature["inputs"]]
        self._outputs = [t["name"] for t in signature["outputs"]]

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        session = getattr(self._local, "session", None) or self.module
        if self.device.type == "cpu":
            return session.run(self._outputs, dict(zip(self._inputs, inputs, strict=True)))
        binding = session.io_binding()
        for name, array in zip(self._inputs, inputs, strict=True):
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in self._outputs:
            binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    @contextlib.contextmanager
    def instance(self):
        """This model thread's own session, for as long as the thread serves."""
        first = self._first_taken.acquire(blocking=False)
        self._local.session = self.module if first else self._session()
        try:
            yield
        finally:
            self._local.session = None


def _default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load(data: bytes, fmt: str, device: Device, threads: int | None, signature: dict | None = None) -> OnnxModel:
    if fmt != "onnx":
        raise KeyError(fmt)
    model = OnnxModel(data, device, threads)
    if signature is not None:
        model.follow_signature(signature)
    return model
