"""The PyTorch adapter end to end on the toy task: FSDP2 on 2 gloo processes (learns, sharded checkpoints,
crash + --resume bit-exact, other world size / strategy refused), SIGTERM -> checkpoint + clean stop + exact
resume, and the adapter's bad-input errors."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ml.engine import run
from ml.engine.config import parse_config
from ml.engine.errors import ConfigError, ExportError
from ml.engine.testing.toy import ToyConfig
from ml.engine.torch import TorchRun
from ml.engine.torch.state import load_model_state

TOY = str(Path("ml/engine/testing/toy.py").resolve())
PY = [sys.executable, *(["-S"] if sys.flags.no_site else [])]
COMMON = ["--epochs", "1", "--no-shuffle", "--log-every", "4", "--checkpoint-every", "8", "--set", "rows=1024"]


@pytest.fixture(autouse=True)
def tracking(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")


def toy(run_dir: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([*PY, TOY, *COMMON, *argv, "--set", f"run_dir={run_dir}"], capture_output=True, text=True,
                          timeout=600)


def latest(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()


def test_fsdp_trains_and_resumes_a_crash_bit_exactly(tmp_path):
    fsdp = ["--nproc", "2", "--strategy", "fsdp", "--batch-size", "32"]
    straight = toy(tmp_path / "fsdp", *fsdp)
    assert straight.returncode == 0, straight.stderr[-4000:]
    assert "2 x cpu, fp32, fsdp" in straight.stderr
    final = latest(tmp_path / "fsdp")
    assert final.name == "ckpt-00000016"
    # sharded: each rank wrote its own shard file and RNG; no rank wrote a whole state.pt
    assert sorted(p.name for p in (final / "model").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert (final / "rng-1.pt").is_file() and not (final / "state.pt").exists()

    metrics = json.loads((tmp_path / "fsdp" / "metrics.json").read_text())
    assert metrics["eval_metrics"]["auc"] > 0.7, metrics  # it learned in 16 steps (chance: 0.5)
    a = load_model_state(final)

    crashed = toy(tmp_path / "crash", *fsdp, "--set", "fail_at_step=12")
    assert crashed.returncode != 0 and "injected failure" in crashed.stderr
    assert latest(tmp_path / "crash").name == "ckpt-00000008"
    resumed = toy(tmp_path / "crash", *fsdp, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed from" in resumed.stderr
    c = load_model_state(latest(tmp_path / "crash"))
    different = [k for k in a if not torch.equal(a[k], c[k])]
    assert not different, f"fsdp crash + --resume differs from the straight run in {different}"

    # the exported model (gathered from the shards) reproduces its golden batch
    signature = json.loads((tmp_path / "fsdp" / "export" / "signature.json").read_text())
    assert signature["inputs"][0]["name"] == "x"

    other_world = toy(tmp_path / "crash", "--nproc", "1", "--batch-size", "32", "--resume")
    assert other_world.returncode == 1
    assert "different config" in other_world.stderr and "nproc: 2 -> 1" in other_world.stderr
    other_strategy = toy(tmp_path / "crash", "--nproc", "2", "--batch-size", "32", "--resume")
    assert other_strategy.returncode != 0
    assert "strategy: 'fsdp' -> 'ddp'" in other_strategy.stderr


def test_sigterm_checkpoints_stops_cleanly_and_resume_is_exact(tmp_path):
    argv = ["--batch-size", "16", "--set", "dropout=0.2"]  # 64 steps
    straight = toy(tmp_path / "straight", *argv)
    assert straight.returncode == 0, straight.stderr[-4000:]
    run_dir = tmp_path / "stopped"
    proc = subprocess.Popen([*PY, TOY, *COMMON, *argv, "--set", f"run_dir={run_dir}"], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints" / "ckpt-00000008").exists() and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "got SIGTERM" in err and "relaunch with --resume" in err
    stopped_at = latest(run_dir)
    assert stopped_at.name != "ckpt-00000064" and not (run_dir / "export").exists()
    resumed = toy(run_dir, *argv, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    a, b = load_model_state(latest(tmp_path / "straight")), load_model_state(latest(run_dir))
    assert all(torch.equal(a[k], b[k]) for k in a)


def _config(tmp_path, *argv):
    return parse_config(ToyConfig, ["--set", f"run_dir={tmp_path / 'r'}", "--set", "run_name=r", *argv])


def test_fsdp_on_one_process_is_refused_with_the_fix(tmp_path):
    with run.start(_config(tmp_path, "--strategy", "fsdp"), project="toy") as r:
        with pytest.raises(ConfigError, match="fsdp shards the model across processes .* use --nproc 2"):
            TorchRun(r, r.config)


def test_export_without_example_inputs_names_the_fix(tmp_path):
    with run.start(_config(tmp_path), project="toy") as r, TorchRun(r, r.config) as t:
        net = t.wrap(torch.nn.Linear(3, 1))
        with pytest.raises(ExportError, match="export needs example inputs: pass a tuple of tensors"):
            t.export(net, None, ["x"], ["y"])


def test_two_optimizers_and_a_scheduler_round_trip(tmp_path):
    with run.start(_config(tmp_path), project="toy") as r, TorchRun(r, r.config) as t:
        net = t.wrap(torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 1)))
        opts = {"tables": torch.optim.Adagrad(net[0].parameters(), lr=0.1),
                "dense": torch.optim.AdamW(net[1].parameters(), lr=0.01)}
        sched = {"dense": torch.optim.lr_scheduler.StepLR(opts["dense"], step_size=1, gamma=0.5)}
        loss = net(torch.tensor([1, 2, 3])).sum()
        t.backward_and_step(loss, list(opts.values()), net.parameters(), 1.0)
        sched["dense"].step()
        t.save(1, net, opts, schedulers=sched, meta={"epoch": 0, "batch_in_epoch": 1})
        expected = torch.rand(2)
    with run.start(_config(tmp_path, "--resume"), project="toy") as r, TorchRun(r, r.config) as t:
        net2 = t.wrap(torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 1)))
        opts2 = {"tables": torch.optim.Adagrad(net2[0].parameters(), lr=0.1),
                 "dense": torch.optim.AdamW(net2[1].parameters(), lr=0.01)}
        sched2 = {"dense": torch.optim.lr_scheduler.StepLR(opts2["dense"], step_size=1, gamma=0.5)}
        ckpt = t.restore(net2, opts2, schedulers=sched2)
        assert ckpt.step == 1 and ckpt.meta["batch_in_epoch"] == 1
        assert torch.equal(net2[0].weight, net[0].weight)
        assert sched2["dense"].get_last_lr() == [0.005]
        assert torch.equal(torch.rand(2), expected)  # RNG restored to the moment of the checkpoint
        with pytest.raises(Exception, match="holds optimizers .* pass the same names"):
            t.restore(net2, {"only": opts2["dense"]})
