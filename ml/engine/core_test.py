"""The framework-neutral core on its own: no torch or TensorFlow import (and how long the import takes), the run
object's files and tracking, SIGTERM -> should_stop, rank rules, and checkpoint folders across a resume."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import mlflow
import pytest

from ml.engine import run
from ml.engine.config import TrainerConfig, parse_config
from ml.engine.errors import CheckpointError, EngineError


@dataclass
class LoopConfig(TrainerConfig):
    """A hand-written loop's config."""

    width: int = field(default=4, metadata={"help": "width"})


def _config(tmp_path, *argv):
    return parse_config(LoopConfig, ["--set", f"run_dir={tmp_path / 'run'}", "--set", "run_name=r", *argv])


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    # One store for the module: creating an MLflow sqlite schema takes seconds.
    return mlflow.MlflowClient(f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db")


def test_core_imports_neither_torch_nor_tensorflow():
    code = ("import sys, time\nt = time.perf_counter()\n"
            "from ml.engine import run, config, checkpoint, tracking, progress, tensorboard, metrics\n"
            "dt = time.perf_counter() - t\n"
            "heavy = sorted(m for m in ('torch', 'tensorflow', 'keras', 'jax') if m in sys.modules)\n"
            "print(heavy, f'{dt:.3f}')\n")
    proc = subprocess.run([sys.executable, *(["-S"] if sys.flags.no_site else []), "-c", code],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    heavy, seconds = proc.stdout.rsplit(" ", 1)
    assert heavy == "[]", f"the core imported {heavy}"
    print(f"core import: {float(seconds):.3f} s")


def test_a_full_run_in_a_subprocess_never_loads_torch(tmp_path):
    code = ("import sys\nfrom ml.engine import run\nfrom ml.engine.config import TrainerConfig, parse_config\n"
            f"cfg = parse_config(TrainerConfig, ['--set', 'run_dir={tmp_path / 'sub'}', '--set', 'run_name=s'])\n"
            "with run.start(cfg, project='neutral') as r:\n"
            "    r.log({'train/loss': 1.0}, 1)\n"
            "    with r.checkpoint_writer(1, {'epoch': 0}) as d:\n"
            "        (d / 'w.txt').write_text('1')\n"
            "print(sorted(m for m in ('torch', 'tensorflow') if m in sys.modules))\n")
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/sub.db")
    proc = subprocess.run([sys.executable, *(["-S"] if sys.flags.no_site else []), "-c", code],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout
    assert (tmp_path / "sub" / "checkpoints" / "ckpt-00000001" / "w.txt").read_text() == "1"


def test_run_writes_config_tracking_tensorboard_and_results(tmp_path, client):
    with run.start(_config(tmp_path), project="loop", client=client) as r:
        assert r.is_primary and r.rank == 0 and r.world_size == 1
        r.set_total_steps(3)
        for step in (1, 2, 3):
            r.log({"train/loss": 1.0 / step}, step)
        r.write_result(global_step=3, final_loss=1 / 3, eval_metrics={"auc": 0.5})
        run_id = r.run_id
    assert json.loads((tmp_path / "run" / "config.json").read_text())["width"] == 4
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["global_step"] == 3
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED" and got.data.tags["mlenv.project"] == "loop"
    assert [m.value for m in sorted(client.get_metric_history(run_id, "train/loss"), key=lambda m: m.step)] == \
        [1.0, 0.5, 1 / 3]


def test_log_on_a_non_zero_rank_names_the_fix(tmp_path, monkeypatch, client):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with run.start(_config(tmp_path), project="loop", client=client) as r:
        assert not r.is_primary
        with pytest.raises(EngineError, match=r"rank 1 of 2: only rank 0 .* `if r.is_primary:`"):
            r.log({"train/loss": 1.0}, 1)
    assert not (tmp_path / "run" / "config.json").exists()


def test_bad_rank_environment_is_refused(tmp_path, monkeypatch, client):
    monkeypatch.setenv("RANK", "two")
    with pytest.raises(EngineError, match="RANK='two' .* not an integer"):
        with run.start(_config(tmp_path), project="loop", client=client):
            pass


def test_sigterm_sets_should_stop_and_the_run_ends_killed(tmp_path, client):
    before = signal.getsignal(signal.SIGTERM)
    with run.start(_config(tmp_path), project="loop", client=client) as r:
        assert not r.should_stop
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while not r.should_stop and time.monotonic() < deadline:
            time.sleep(0.01)
        assert r.should_stop and r.stop_signal == signal.SIGTERM
        run_id = r.run_id
    assert signal.getsignal(signal.SIGTERM) == before  # handlers restored
    assert client.get_run(run_id).info.status == "KILLED"


def test_resume_continues_the_checkpoint_and_the_mlflow_run(tmp_path, client):
    with run.start(_config(tmp_path), project="loop", client=client) as r:
        for step in (2, 4):
            with r.checkpoint_writer(step, {"epoch": 0, "batch_in_epoch": step}) as d:
                (d / "state.txt").write_text(str(step))
        first_id = r.run_id
    with run.start(_config(tmp_path, "--resume"), project="loop", client=client) as r:
        assert r.resume_from.step == 4 and r.resume_from.meta["batch_in_epoch"] == 4
        assert (r.resume_from.path / "state.txt").read_text() == "4"
        assert r.run_id == first_id
    with pytest.raises(CheckpointError, match=r"different config .*width: 4 -> 8"):
        with run.start(_config(tmp_path, "--resume", "--set", "width=8"), project="loop", client=client):
            pass


def test_fresh_run_without_resume_ignores_old_checkpoints(tmp_path, client):
    with run.start(_config(tmp_path), project="loop", client=client) as r:
        with r.checkpoint_writer(2) as d:
            (d / "x").write_text("x")
    with run.start(_config(tmp_path), project="loop", client=client) as r:
        assert r.resume_from is None and r.latest_checkpoint().step == 2


def test_the_engine_turns_off_mlflow_telemetry_before_mlflow_loads():
    # MLflow's own check (mlflow.telemetry.utils.is_telemetry_disabled) also treats pytest and CI as "off":
    # run without those so the engine's setting is what decides.
    import subprocess
    import sys

    code = ("import ml.engine, mlflow.telemetry.utils as u, os; "
            "print(os.environ.get('MLFLOW_DISABLE_TELEMETRY'), u.is_telemetry_disabled())")
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", "PYTEST_CURRENT_TEST", "CI")}
    out = subprocess.run([sys.executable, *(["-S"] if sys.flags.no_site else []), "-c", code], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["true", "True"], out.stderr[-2000:]
