"""The model server, driven by the real tritonclient.grpc client over loopback."""

import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import tritonclient.grpc as triton
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from ml.serving import bundle, server
from ml.serving.runtimes import PythonModel
from ml.serving.testing import expected, inputs_for, make_bundle, rows


@pytest.fixture
def served(tmp_path):
    repo = tmp_path / "repo"
    make_bundle(repo, name="tiny", version="1")
    make_bundle(repo, name="tiny", version="2", bias=1.0)
    make_bundle(repo, name="other", version="1", bias=-2.0)
    srv = server.start(repository_dir=repo, port=0, metrics_port=0, max_message_bytes=1 << 20)
    client = triton.InferenceServerClient(f"127.0.0.1:{srv.port}")
    yield srv, client, repo
    client.close()
    srv.stop(1)


def code_of(exc: InferenceServerException) -> str:
    return exc.status()


def test_health_and_metadata(served):
    srv, client, _ = served
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny") and client.is_model_ready("tiny", "1") and not client.is_model_ready("nope")
    meta = client.get_server_metadata()
    assert meta.name == "mlenv"
    md = client.get_model_metadata("tiny")
    assert md.versions == ["1", "2"] and md.platform == "pytorch_torchscript"
    assert [(t.name, t.datatype, list(t.shape)) for t in md.inputs] == [("ids", "INT64", [-1, 4]), ("dense", "FP32", [-1, 3])]
    assert [(t.name, t.datatype) for t in md.outputs] == [("score", "FP32"), ("prob", "FP32")]
    config = client.get_model_config("tiny").config
    assert config.max_batch_size == 64 and list(config.input[0].dims) == [4]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    # Parsed by tritonclient's own model_config_pb2: our field numbers must be Triton's.
    [group] = config.instance_group
    assert (group.kind, group.count, list(group.gpus)) == (model_config_pb2.ModelInstanceGroup.KIND_CPU, 1, [])


def test_infer_raw_contents_versions_and_models(served):
    _, client, _ = served
    ids, dense = rows()
    latest = client.infer("tiny", inputs_for(ids, dense))
    assert latest.get_response().model_version == "2"
    want_score, want_prob = expected(ids, dense, bias=1.0)
    np.testing.assert_allclose(latest.as_numpy("score"), want_score, rtol=0, atol=1e-6)
    np.testing.assert_allclose(latest.as_numpy("prob"), want_prob, rtol=0, atol=1e-6)
    v1 = client.infer("tiny", inputs_for(ids, dense), model_version="1")
    np.testing.assert_allclose(v1.as_numpy("score"), expected(ids, dense)[0], atol=1e-6)
    other = client.infer("other", inputs_for(ids, dense))
    np.testing.assert_allclose(other.as_numpy("score"), expected(ids, dense, bias=-2.0)[0], atol=1e-6)
    only_prob = client.infer("tiny", inputs_for(ids, dense), outputs=[triton.InferRequestedOutput("prob")])
    assert only_prob.as_numpy("score") is None and only_prob.as_numpy("prob").shape == (5,)


@pytest.mark.parametrize("case,code,message", [
    ("unknown model", "StatusCode.NOT_FOUND", "unknown model 'nope'; loaded models: other, tiny"),
    ("unknown version", "StatusCode.NOT_FOUND", "model 'tiny' has no version '9'; loaded versions: 1, 2"),
    ("wrong name", "StatusCode.INVALID_ARGUMENT", "missing ['ids'], unknown ['idz']"),
    ("wrong dtype", "StatusCode.INVALID_ARGUMENT", "input dense: datatype FP64, the model expects FP32"),
    ("wrong shape", "StatusCode.INVALID_ARGUMENT", "input ids: shape [5, 3], the model expects [-1, 4]"),
    ("ragged batch", "StatusCode.INVALID_ARGUMENT", "input dense has 4 rows, other inputs 5"),
    ("too many rows", "StatusCode.INVALID_ARGUMENT", "batch of 65 rows; model tiny accepts 1..64 per request"),
    ("unknown output", "StatusCode.INVALID_ARGUMENT", "unknown outputs ['logits']"),
    ("oversize", "StatusCode.RESOURCE_EXHAUSTED", ""),
])
def test_bad_requests_get_the_right_status_and_the_next_request_succeeds(served, case, code, message):
    _, client, _ = served
    ids, dense = rows()
    model, kwargs, ins = "tiny", {}, None
    if case == "unknown model":
        model = "nope"
    elif case == "unknown version":
        kwargs["model_version"] = "9"
    elif case == "wrong name":
        ins = inputs_for(ids, dense, ids_name="idz")
    elif case == "wrong dtype":
        ins = inputs_for(ids, dense.astype(np.float64), dense_type="FP64")
    elif case == "wrong shape":
        ins = inputs_for(ids[:, :3].copy(), dense)
    elif case == "ragged batch":
        ins = inputs_for(ids, dense[:4].copy())
    elif case == "too many rows":
        ins = inputs_for(*rows(65))
    elif case == "unknown output":
        kwargs["outputs"] = [triton.InferRequestedOutput("logits")]
    elif case == "oversize":
        big = np.zeros((60000, 4), dtype=np.int64)  # 1.9 MB > the 1 MiB limit of this server
        ins = inputs_for(big, np.zeros((60000, 3), dtype=np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer(model, ins or inputs_for(ids, dense), **kwargs)
    assert code_of(info.value) == code, info.value
    assert message in info.value.message()
    ok = client.infer("tiny", inputs_for(ids, dense))
    assert ok.as_numpy("score").shape == (5,)


def test_made_up_model_names_do_not_become_metric_series(served):
    srv, client, _ = served
    ids, dense = rows()
    for i in range(20):
        with pytest.raises(InferenceServerException):
            client.infer(f"made-up-{i}", inputs_for(ids, dense))
    text = urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics").read().decode()
    assert "made-up" not in text
    assert 'mlenv_inference_requests_total{code="NOT_FOUND",model="_unknown",version=""} 20.0' in text


def test_typed_contents_are_accepted(served):
    """Clients that send InferTensorContents instead of raw bytes (KServe's typed form)."""
    srv, _, _ = served
    import grpc

    from ml.serving.proto import inference_pb2 as pb
    from ml.serving.proto import inference_pb2_grpc as pb_grpc

    ids, dense = rows(2)
    request = pb.ModelInferRequest(model_name="tiny", model_version="1")
    request.inputs.add(name="ids", datatype="INT64", shape=[2, 4]).contents.int64_contents.extend(ids.ravel().tolist())
    request.inputs.add(name="dense", datatype="FP32", shape=[2, 3]).contents.fp32_contents.extend(dense.ravel().tolist())
    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    score = np.frombuffer(response.raw_output_contents[0], dtype="<f4")
    np.testing.assert_allclose(score, expected(ids, dense)[0], atol=1e-6)


def test_dynamic_batching_merges_concurrent_requests(tmp_path):
    repo = tmp_path / "repo"
    make_bundle(repo, name="tiny", max_queue_delay_us=50_000)
    srv = server.start(repository_dir=repo, port=0, metrics_port=0)
    try:
        ids, dense = rows(2)

        def one(_):
            with triton.InferenceServerClient(f"127.0.0.1:{srv.port}") as c:
                return c.infer("tiny", inputs_for(ids, dense)).as_numpy("score")

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(one, range(32)))
        for r in results:
            np.testing.assert_allclose(r, expected(ids, dense)[0], atol=1e-6)
        text = urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics").read().decode()
        count = float(next(l.split()[-1] for l in text.splitlines() if l.startswith('mlenv_batch_size_rows_count{model="tiny/1"}')))
        assert count < 32, f"32 requests ran as {count} batches: nothing was batched"
        assert 'mlenv_inference_requests_total{code="OK",model="tiny",version="1"} 32.0' in text
        assert "mlenv_inference_latency_seconds_bucket" in text and "mlenv_queue_depth" in text
    finally:
        srv.stop(1)


def test_hot_reload_of_a_new_version_fails_no_in_flight_request(served):
    srv, client, repo = served
    ids, dense = rows()
    stop, failures, versions = threading.Event(), [], set()

    def hammer():
        with triton.InferenceServerClient(f"127.0.0.1:{srv.port}") as c:
            while not stop.is_set():
                try:
                    versions.add(c.infer("tiny", inputs_for(ids, dense)).get_response().model_version)
                except Exception as exc:  # noqa: BLE001
                    failures.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    make_bundle(repo, name="tiny", version="3", bias=3.0)
    srv.repository.keep_versions = 1  # v3 replaces v1 and v2 while requests are running
    srv.repository.scan(repo)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    assert not failures, failures[:3]
    assert "3" in versions and client.get_model_metadata("tiny").versions == ["3"]
    np.testing.assert_allclose(client.infer("tiny", inputs_for(ids, dense)).as_numpy("score"),
                               expected(ids, dense, bias=3.0)[0], atol=1e-6)


def test_tampered_bundle_is_refused_and_the_server_keeps_serving(served):
    srv, client, repo = served
    bad = make_bundle(repo, name="tiny", version="7")
    artifact = bad / "model/model.pt"
    artifact.write_bytes(artifact.read_bytes() + b"\0")
    srv.repository.scan(repo)
    assert client.get_model_metadata("tiny").versions == ["1", "2"]
    assert "model/model.pt has sha256:" in srv.repository.failed[str(bad)]
    with pytest.raises(bundle.BundleError, match="the bundle was modified after it was built"):
        server.start(bundles_to_load=[bad], port=0, metrics_port=None)


def _serve_cli(*args):
    return subprocess.Popen([sys.executable, *(["-S"] if sys.flags.no_site else []), "-m", "ml.serving.server", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_ready(port, proc, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read())
        try:
            with triton.InferenceServerClient(f"127.0.0.1:{port}") as c:
                if c.is_server_ready():
                    return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become ready")


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_drains_in_flight_requests_then_exits(tmp_path):
    path = make_bundle(tmp_path, name="tiny", work=300)  # each batch computes for ~0.3 s: in flight at SIGTERM
    port = _free_port()
    proc = _serve_cli("--bundle", str(path), "--port", str(port), "--metrics-port", "-1", "--drain-seconds", "10")
    try:
        _wait_ready(port, proc)
        ids, dense = rows(1)
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        results, done = [], threading.Event()

        def callback(result, error):
            results.append(error or result)
            if len(results) == 4:
                done.set()

        for _ in range(4):
            client.async_infer("tiny", inputs_for(ids, dense), callback)
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert done.wait(20)
        assert all(not isinstance(r, Exception) for r in results), results
        assert proc.wait(30) == 0
        assert "draining" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_binds_loopback_by_default_and_serves_tls(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    path = make_bundle(tmp_path, name="tiny")
    srv = server.start(bundles_to_load=[path], port=0, metrics_port=None, tls_cert=cert, tls_key=key)
    try:
        with triton.InferenceServerClient(f"localhost:{srv.port}", ssl=True, root_certificates=str(cert)) as c:
            ids, dense = rows()
            np.testing.assert_allclose(c.infer("tiny", inputs_for(ids, dense)).as_numpy("score"), expected(ids, dense)[0],
                                       atol=1e-6)
        with triton.InferenceServerClient(f"127.0.0.1:{srv.port}") as plain:  # no TLS: refused
            with pytest.raises(InferenceServerException):
                plain.is_server_live()
    finally:
        srv.stop(1)
    import inspect

    assert inspect.signature(server.start).parameters["host"].default == "127.0.0.1"


def test_cli_refuses_bad_usage(tmp_path):
    proc = _serve_cli("--port", "0")
    assert proc.wait(60) == 2 and "give at least one --bundle or a --repository" in proc.stderr.read()
    proc = _serve_cli("--bundle", str(tmp_path), "--port", "0", "--metrics-port", "-1")
    assert proc.wait(60) == 1 and "is not a bundle: no bundle.json" in proc.stderr.read()


def test_cli_refuses_a_device_it_cannot_serve_on(tmp_path):
    b = make_bundle(tmp_path / "repo")
    proc = _serve_cli("--bundle", str(b), "--port", "0", "--metrics-port", "-1", "--device", "tpu")
    assert proc.wait(60) == 1 and "--device 'tpu' is not a device the server knows; use cpu, cuda" in proc.stderr.read()
    proc = _serve_cli("--bundle", str(b), "--port", "0", "--metrics-port", "-1", "--golden-atol", "-1")
    assert proc.wait(60) == 2 and "--golden-atol -1.0: give a tolerance of 0 or more" in proc.stderr.read()
    if torch.cuda.is_available():
        wanted, message = f"cuda:{torch.cuda.device_count()}", f"has {torch.cuda.device_count()} CUDA device(s)"
    else:
        wanted, message = "cuda", "sees no CUDA device"
    proc = _serve_cli("--bundle", str(b), "--port", "0", "--metrics-port", "-1", "--device", wanted)
    err = proc.stderr.read()
    assert proc.wait(60) == 1 and message in err and "serve: error:" in err, err


# ------------------------------------------------------------------ the batcher on its own, with a Python model

class SleepyModel:
    """Doubles its input after `seconds` of sleep (the GIL is free meanwhile); records every call."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.calls, self.lock = seconds, [], threading.Lock()

    def __call__(self, x):
        with self.lock:
            self.calls.append((threading.current_thread().name, x.shape[0]))
        time.sleep(self.seconds)
        return x * 2


def _batcher(model, *, max_rows=64, delay_s=0.5, instances=1):
    return server.DynamicBatcher("m/1", PythonModel(model), max_rows, delay_s, server.Metrics(), instances)


def test_a_lone_request_runs_at_once_not_after_max_queue_delay():
    batcher = _batcher(SleepyModel(0.0), delay_s=0.5)
    try:
        for _ in range(3):
            start = time.perf_counter()
            out = batcher.submit([np.arange(3, dtype=np.float32)], 3, 10)
            assert time.perf_counter() - start < 0.2, "a lone request waited for company that could not come"
            np.testing.assert_array_equal(out[0], [0, 2, 4])
    finally:
        batcher.close()


def test_requests_that_queue_while_the_model_is_busy_run_as_one_batch_with_their_own_rows():
    model = SleepyModel(0.3)
    batcher = _batcher(model, delay_s=0.5)
    try:
        with ThreadPoolExecutor(5) as pool:
            first = pool.submit(batcher.submit, [np.full(1, 100.0)], 1, 10)
            time.sleep(0.1)  # the first batch is running; these four queue up behind it
            rest = [pool.submit(batcher.submit, [np.arange(n, dtype=np.float64) + 10 * n], n, 10) for n in (1, 2, 3, 4)]
            np.testing.assert_array_equal(first.result()[0], [200.0])
            for n, future in zip((1, 2, 3, 4), rest, strict=True):
                np.testing.assert_array_equal(future.result()[0], (np.arange(n) + 10 * n) * 2)
        assert [rows for _, rows in model.calls] == [1, 10]
    finally:
        batcher.close()


def test_instances_run_batches_side_by_side():
    model = SleepyModel(0.3)
    batcher = _batcher(model, instances=2)
    try:
        with ThreadPoolExecutor(2) as pool:
            start = time.perf_counter()
            first = pool.submit(batcher.submit, [np.ones(1)], 1, 10)
            time.sleep(0.05)
            second = pool.submit(batcher.submit, [np.ones(1)], 1, 10)
            first.result(), second.result()
            elapsed = time.perf_counter() - start
        assert len({thread for thread, _ in model.calls}) == 2, model.calls
        assert elapsed < 0.55, f"two 0.3 s batches on two instances took {elapsed:.2f} s: they did not overlap"
    finally:
        batcher.close()
    with pytest.raises(ValueError, match="instances must be at least 1"):
        _batcher(model, instances=0)


def test_the_model_gets_its_own_copy_of_read_only_request_memory():
    def in_place(x):
        x += 1  # a model that writes into its input
        return x

    batcher = _batcher(in_place)
    try:
        payload = np.arange(4, dtype=np.int64).tobytes()
        view = np.frombuffer(payload, dtype=np.int64)  # what the server decodes a request into
        np.testing.assert_array_equal(batcher.submit([view], 4, 10)[0], [1, 2, 3, 4])
        assert payload == np.arange(4, dtype=np.int64).tobytes()
    finally:
        batcher.close()


def test_a_reserved_request_still_runs_when_its_version_is_retired_meanwhile():
    batcher = _batcher(SleepyModel(0.0))
    batcher.reserve()  # what ModelRepository.acquire does, under the lock a reload swaps versions under
    closer = threading.Thread(target=batcher.close)
    closer.start()
    time.sleep(0.1)
    assert closer.is_alive(), "close() returned while a reserved request had yet to arrive"
    np.testing.assert_array_equal(batcher.submit([np.ones(2)], 2, 10, reserved=True)[0], [2, 2])
    closer.join(5)
    assert not closer.is_alive()
    with pytest.raises(server.RequestError, match="is unloading"):
        batcher.submit([np.ones(2)], 2, 10)


def test_served_lone_request_does_not_wait_and_concurrent_ones_batch(tmp_path):
    path = make_bundle(tmp_path, name="tiny", max_queue_delay_us=500_000, work=40)  # ~40 ms per batch
    srv = server.start(bundles_to_load=[path], port=0, metrics_port=0)
    try:
        ids, dense = rows(2)
        clients = [triton.InferenceServerClient(f"127.0.0.1:{srv.port}") for _ in range(6)]
        clients[0].infer("tiny", inputs_for(ids, dense))  # warm-up
        model_time = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            clients[0].infer("tiny", inputs_for(ids, dense))
            model_time = min(model_time, time.perf_counter() - start)
        assert model_time < 0.5, f"a lone request took {model_time:.2f} s: it waited max_queue_delay (0.5 s)"
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda c: c.infer("tiny", inputs_for(ids, dense)).as_numpy("score"), clients))
        for r in results:
            np.testing.assert_allclose(r, expected(ids, dense)[0], atol=1e-6)
        text = urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics").read().decode()

        def sample(prefix):
            return float(next(l.split()[-1] for l in text.splitlines() if l.startswith(prefix)))

        batches = sample('mlenv_batch_size_rows_count{model="tiny/1"}')
        of_one_request = sample('mlenv_batch_size_rows_bucket{le="2.0",model="tiny/1"}')
        assert batches - of_one_request >= 1, "6 concurrent requests behind a slow model never ran as one batch"
        for c in clients:
            c.close()
    finally:
        srv.stop(1)
