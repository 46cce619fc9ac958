"""Regression tests for the server's defects found in the hardening review (issue 16): each failed before its fix.

Batcher shutdown with several instances, the repository's rescan memo (retired versions, bundles caught
mid-copy, bundles rewritten in place), metric series of retired versions, overload, ModelConfig dtypes, and
signals during start-up.
"""

import ipaddress
import json
import logging
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from ml.serving import server
from ml.serving.batcher import DynamicBatcher
from ml.serving.metrics import Metrics
from ml.serving.repository import ModelRepository
from ml.serving.runtimes import PythonModel
from ml.serving.testing import expected, inputs_for, make_bundle, rows


def _double(x):
    return x * 2


def test_retiring_a_version_with_several_instances_stops_every_instance_at_once():
    batcher = DynamicBatcher("m/1", PythonModel(_double), 64, 0.5, Metrics(), instances=4)
    batcher.reserve()  # a request that picked this version just before it was retired
    closer = threading.Thread(target=batcher.close)
    closer.start()
    time.sleep(0.1)
    np.testing.assert_array_equal(batcher.submit([np.ones(2)], 2, 10, reserved=True)[0], [2, 2])
    closer.join(3)
    assert not closer.is_alive(), "close() still waiting: instances were left blocked in _take_batch"
    assert not any(t.is_alive() for t in batcher._threads), "an instance thread outlived close()"


def _loaded_messages(caplog, name, version):
    return [r for r in caplog.records if r.getMessage().startswith(f"loaded {name} version {version} ")]


def test_keep_versions_does_not_reload_retired_versions_on_every_scan(tmp_path, caplog):
    repo = tmp_path / "repo"
    for version in ("1", "2"):
        make_bundle(repo, name="tiny", version=version)
    repository = ModelRepository(Metrics(), keep_versions=1)
    try:
        with caplog.at_level(logging.INFO, logger="mlenv.serving"):
            for _ in range(3):
                repository.scan(repo)
        assert repository.versions("tiny") == ["2"]
        assert len(_loaded_messages(caplog, "tiny", "1")) <= 1, "the retired version 1 was loaded again on a rescan"
        assert len(_loaded_messages(caplog, "tiny", "2")) == 1
    finally:
        repository.close()


def test_a_bundle_caught_mid_copy_is_loaded_once_the_copy_completes(tmp_path):
    staging, repo = tmp_path / "staging", tmp_path / "repo"
    source = make_bundle(staging, name="tiny", version="1")
    target = repo / "tiny" / "1"
    target.mkdir(parents=True)
    shutil.copy2(source / "bundle.json", target / "bundle.json")  # the copy has not reached model/ yet
    repository = ModelRepository(Metrics())
    try:
        repository.scan(repo)
        assert repository.versions("tiny") == [] and str(target) in repository.failed
        shutil.copytree(source / "model", target / "model")
        repository.scan(repo)
        assert repository.versions("tiny") == ["1"], "a bundle refused mid-copy stays refused after the copy ends"
    finally:
        repository.close()


def test_a_bundle_rewritten_in_place_is_reloaded(tmp_path):
    repo = tmp_path / "repo"
    make_bundle(repo, name="tiny", version="1")
    repository = ModelRepository(Metrics())
    try:
        repository.scan(repo)
        first = repository.get("tiny", "1")
        time.sleep(0.01)
        make_bundle(repo, name="tiny", version="1", bias=3.0)  # same folder, new contents
        repository.scan(repo)
        second = repository.get("tiny", "1")
        assert second is not first, "a bundle rewritten in place was skipped"
        ids, dense = rows(3)
        out = second.batcher.submit([ids, dense], 3, 10)
        np.testing.assert_allclose(out[0], expected(ids, dense, bias=3.0)[0], atol=1e-6)
    finally:
        repository.close()


def _metric(metrics: Metrics, name: str, labels: dict) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_reloading_a_version_from_another_path_keeps_it_marked_loaded(tmp_path):
    a = make_bundle(tmp_path / "a", name="tiny", version="1")
    b = make_bundle(tmp_path / "b", name="tiny", version="1")
    metrics = Metrics()
    repository = ModelRepository(metrics)
    try:
        repository.load(a)
        repository.load(b)
        assert _metric(metrics, "mlenv_model_loaded", {"model": "tiny", "version": "1"}) == 1
    finally:
        repository.close()


def test_retired_versions_leave_the_metrics(tmp_path):
    repo = tmp_path / "repo"
    metrics = Metrics()
    repository = ModelRepository(metrics, keep_versions=1)
    try:
        make_bundle(repo, name="tiny", version="1")
        repository.scan(repo)
        model = repository.get("tiny", "1")
        model.count(grpc.StatusCode.OK)
        make_bundle(repo, name="tiny", version="2")
        repository.scan(repo)
        assert _metric(metrics, "mlenv_model_loaded", {"model": "tiny", "version": "1"}) is None
        assert _metric(metrics, "mlenv_inference_requests_total", {"model": "tiny", "version": "1", "code": "OK"}) is None
        assert _metric(metrics, "mlenv_model_loaded", {"model": "tiny", "version": "2"}) == 1
    finally:
        repository.close()


def test_default_keeps_a_bounded_number_of_versions(tmp_path):
    repo = tmp_path / "repo"
    for version in ("1", "2", "3", "4"):
        make_bundle(repo, name="tiny", version=version)
    repository = ModelRepository(Metrics())
    try:
        repository.scan(repo)
        assert repository.versions("tiny") == ["3", "4"], "the default kept every version's weights and threads"
    finally:
        repository.close()


def test_overload_is_refused_with_resource_exhausted_at_once_and_recovers(tmp_path):
    path = make_bundle(tmp_path, name="tiny", max_queue_delay_us=3_000_000)
    srv = server.start(bundles_to_load=[path], port=0, metrics_port=None, max_concurrent_rpcs=1)
    clients = [triton.InferenceServerClient(f"127.0.0.1:{srv.port}") for _ in range(2)]
    ids, dense = rows(2)
    model = srv.repository.get("tiny")
    try:
        clients[0].infer("tiny", inputs_for(ids, dense))
        model.batcher.reserve()  # a request still decoding: the next one waits (up to 3 s) to batch with it
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(clients[0].infer, "tiny", inputs_for(ids, dense))
            time.sleep(0.3)
            assert not held.done()
            start = time.perf_counter()
            with pytest.raises(InferenceServerException) as refused:
                clients[1].infer("tiny", inputs_for(ids, dense), client_timeout=10)
            assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED", refused.value
            assert time.perf_counter() - start < 1.0, "overload was not refused at once"
            model.batcher.cancel()
            np.testing.assert_allclose(held.result(10).as_numpy("score"), expected(ids, dense)[0], atol=1e-6)
        out = clients[1].infer("tiny", inputs_for(ids, dense))  # load dropped: served again
        np.testing.assert_allclose(out.as_numpy("score"), expected(ids, dense)[0], atol=1e-6)
    finally:
        for c in clients:
            c.close()
        srv.stop(1)


def test_the_batcher_refuses_work_past_its_queue_bound():
    gate = threading.Event()

    def blocked(x):
        gate.wait(10)
        return x * 2

    batcher = DynamicBatcher("m/1", PythonModel(blocked), 4, 0.0, Metrics(), instances=1, max_queued_rows=4)
    try:
        with ThreadPoolExecutor(4) as pool:
            running = pool.submit(batcher.submit, [np.ones(4)], 4, 10)
            time.sleep(0.2)  # the model holds the first batch; the queue is empty
            queued = pool.submit(batcher.submit, [np.ones(4)], 4, 10)
            time.sleep(0.2)
            with pytest.raises(server.RequestError, match="queue of model m/1 is full") as exc:
                batcher.submit([np.ones(1)], 1, 10)
            assert exc.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            gate.set()
            running.result(10), queued.result(10)
        np.testing.assert_array_equal(batcher.submit([np.ones(1)], 1, 10)[0], [2])
    finally:
        gate.set()
        batcher.close()


def test_model_config_describes_every_dtype_the_protocol_accepts():
    from ml.serving.protocol import config_datatype

    for torch_dtype, code in (("uint16", 3), ("uint32", 4), ("uint64", 5), ("float32", 11), ("bool", 1)):
        assert config_datatype({"name": "x", "dtype": torch_dtype}) == code


def test_model_config_of_a_uint16_model_is_served(tmp_path):
    import torch

    from ml.serving import bundle

    class Widen(torch.nn.Module):
        def forward(self, x):
            return x.to(torch.float32).sum(1)

    export = tmp_path / "export"
    export.mkdir()
    example = torch.from_numpy(np.arange(6, dtype=np.uint16).reshape(2, 3))
    torch.jit.save(torch.jit.trace(Widen(), (example,)), str(export / "model.pt"))
    (export / "signature.json").write_text(json.dumps({
        "format": "torchscript", "inputs": [{"name": "x", "dtype": "uint16", "shape": [-1, 3]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [-1]}]}))
    np.savez(export / "golden.npz", **{"input.x": example.numpy(), "output.y": np.array([3.0, 12.0], np.float32)})
    path = bundle.write_bundle(export, tmp_path / "b", name="wide", version="1", label="//t", lock_digest="x",
                               git_commit="x")
    srv = server.start(bundles_to_load=[path], port=0, metrics_port=None)
    try:
        with triton.InferenceServerClient(f"127.0.0.1:{srv.port}") as client:
            config = client.get_model_config("wide").config
            assert config.input[0].data_type == 3  # TYPE_UINT16
            x = triton.InferInput("x", [1, 3], "UINT16")
            x.set_data_from_numpy(np.array([[1, 2, 65535]], np.uint16))
            np.testing.assert_array_equal(client.infer("wide", [x]).as_numpy("y"), [65538.0])
    finally:
        srv.stop(1)


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of the LISTEN sockets on `port`, from the kernel's own tables (/proc/net/tcp, tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:
                    raw = bytes.fromhex(address)
                    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # per-word host order
                    ip = ipaddress.ip_address(words)
                    found.add(str(getattr(ip, "ipv4_mapped", None) or ip))  # gRPC binds v4 as ::ffff:a.b.c.d
    return found


def test_the_server_listens_on_loopback_only_by_default(tmp_path):
    path = make_bundle(tmp_path, name="tiny")
    srv = server.start(bundles_to_load=[path], port=0, metrics_port=0)
    try:
        assert _listening_addresses(srv.port) == {"127.0.0.1"}
        assert _listening_addresses(srv.metrics_port) == {"127.0.0.1"}
    finally:
        srv.stop(1)
    srv = server.start(bundles_to_load=[path], host="0.0.0.0", port=0, metrics_port=None)
    try:  # the check itself can tell: an explicit wildcard bind shows up as one
        addresses = _listening_addresses(srv.port)
        assert addresses and all(ipaddress.ip_address(a).is_unspecified for a in addresses), addresses
    finally:
        srv.stop(1)


def test_sigterm_and_sighup_during_start_up_exit_cleanly(tmp_path):
    repo = tmp_path / "repo"
    for version in range(1, 9):
        make_bundle(repo, name="tiny", version=str(version), work=0)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        proc = subprocess.Popen([sys.executable, *(["-S"] if sys.flags.no_site else []), "-m", "ml.serving.server",
                                 "--repository", str(repo), "--port", "0", "--metrics-port", "-1"],
                                stderr=subprocess.PIPE, text=True)
        try:
            for line in proc.stderr:  # the first version is loaded: the others are still loading
                if "loaded tiny version" in line:
                    break
            proc.send_signal(sig)
            if sig == signal.SIGHUP:  # a rescan request, not a stop: the server comes up, then is told to stop
                for line in proc.stderr:
                    if line.startswith("serving "):
                        break
                proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0, f"{sig.name} during start-up killed the server"
        finally:
            if proc.poll() is None:
                proc.kill()


def test_a_server_given_a_public_key_serves_only_bundles_signed_by_it(tmp_path):
    from ml.serving import bundle

    keys = tmp_path / "keys"
    keys.mkdir()
    bundle.generate_signing_key(keys / "ci.pem", keys / "ci.pub")
    repo = tmp_path / "repo"
    bundle.sign(make_bundle(repo, name="tiny", version="1"), keys / "ci.pem")
    unsigned = make_bundle(repo, name="tiny", version="2", bias=9.0)  # a writer of the repository adds a model
    repository = ModelRepository(Metrics(), public_key=keys / "ci.pub")
    try:
        repository.scan(repo)
        assert repository.versions("tiny") == ["1"]
        assert "no bundle.json.sig, and this server only serves signed bundles" in repository.failed[str(unsigned)]
    finally:
        repository.close()
    with pytest.raises(bundle.BundleError, match="cannot read it as a PEM public key"):
        ModelRepository(Metrics(), public_key=keys / "missing.pub")
