"""The checks of every ml_trainer_integration_test, run against the real trainer binary.

The trainer (any engine trainer: a `Task` through `ml.engine.trainer.run`, or a hand-written loop on
`ml.engine.run` + `ml.engine.torch`) runs for a few steps on tiny data inside the
test's sandbox, with MLflow on a test-local sqlite store. Checked:
  - the loss is finite and decreases (MLflow's metric history, read through MlflowClient);
  - checkpoints are written;
  - a run killed with SIGKILL after a checkpoint and resumed with --resume ends with exactly the parameters
    of the uninterrupted run;
  - the MLflow run holds params, metrics and artifacts (checkpoint, export, config);
  - the exported model loads in a fresh process and reproduces the in-memory model's outputs on the golden
    batch (golden.npz holds the eager model's outputs, computed in the trainer process at export time):
    TorchScript / torch.export for framework "pytorch", a SavedModel (ml.engine.tf.export) for "tensorflow".
The spec (trainer path, steps, arguments) comes from $MLENV_TRAINER_IT_SPEC (written by the rule).
"""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest

SPEC = json.loads(Path(os.environ["MLENV_TRAINER_IT_SPEC"]).read_text())
# "pytorch" (torch state in the checkpoint, TorchScript/torch.export) or "tensorflow" (a tf.train.Checkpoint,
# a SavedModel); only that framework is imported here.
FRAMEWORK = SPEC.get("framework", "pytorch")
TRAINER = str(Path(SPEC["trainer"]).absolute())
STEPS, EVERY = SPEC["steps"], SPEC["checkpoint_every"]
KILL_AT = SPEC["kill_after_step"]


def trainer_cmd(run_dir: Path, *extra: str) -> list[str]:
    return [TRAINER, *SPEC["args"], "--max-steps", str(STEPS), "--checkpoint-every", str(EVERY),
            "--log-every", "1", "--set", f"run_dir={run_dir}", "--set", f"run_name={run_dir.name}", *extra]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trainer_it")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
    return folder


@pytest.fixture(scope="module")
def straight(workdir):
    run_dir = workdir / "straight"
    proc = subprocess.run(trainer_cmd(run_dir), capture_output=True, text=True, timeout=SPEC["timeout_s"])
    assert proc.returncode == 0, f"{SPEC['target']}: the trainer failed:\n{proc.stderr[-5000:]}"
    return run_dir, proc.stderr


def run_id_of(stderr: str) -> str:
    """The MLflow run id from the trainer's `mlflow:` line (`... --run ID` in the toolbox command it prints)."""
    for line in stderr.splitlines():
        found = re.search(r"(?:--run|\brun) ([0-9a-f]{32})\b", line) if "mlflow:" in line else None
        if found:
            return found.group(1)
    raise AssertionError(f"the trainer did not print its MLflow run id:\n{stderr[-3000:]}")


def final_params(run_dir: Path) -> dict:
    """name -> numpy array of every saved value of the latest checkpoint (TF: weights, optimizer, position)."""
    folder = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    if FRAMEWORK == "tensorflow":
        import tensorflow as tf

        reader = tf.train.load_checkpoint(str(folder))
        return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
                if k != "_CHECKPOINTABLE_OBJECT_GRAPH"}
    from ml.engine.torch.state import load_model_state

    return {k: v.detach().cpu().numpy() for k, v in load_model_state(folder).items()}


def test_loss_is_finite_and_decreases(straight):
    client = mlflow.MlflowClient()
    history = sorted(client.get_metric_history(run_id_of(straight[1]), "train/loss"), key=lambda m: m.step)
    losses = [m.value for m in history]
    assert len(losses) == STEPS, f"expected a loss per step, got {len(losses)}"
    assert all(math.isfinite(v) for v in losses), losses
    quarter = max(len(losses) // 4, 1)
    first, last = sum(losses[:quarter]) / quarter, sum(losses[-quarter:]) / quarter
    assert last < first, f"loss did not decrease: first quarter {first:.4f}, last quarter {last:.4f}"


def test_checkpoints_are_written(straight):
    names = sorted(p.name for p in (straight[0] / "checkpoints").glob("ckpt-*") if (p / "meta.json").is_file())
    assert names and names[-1] == f"ckpt-{STEPS:08d}", names


def test_mlflow_run_has_params_metrics_and_artifacts(straight):
    client = mlflow.MlflowClient()
    run = client.get_run(run_id_of(straight[1]))
    assert run.info.status == "FINISHED"
    assert run.data.params["max_steps"] == str(STEPS) and "lr" in run.data.params
    assert "train/loss" in run.data.metrics and any(k.startswith("eval/") for k in run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"checkpoint", "export", "config.json"} <= artifacts, artifacts
    assert run.data.tags.get("mlenv.lock_digest", "unknown") != "unknown"


def test_sigkilled_run_resumes_to_identical_parameters(straight, workdir):
    run_dir = workdir / "killed"
    proc = subprocess.Popen(trainer_cmd(run_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    target = run_dir / "checkpoints" / f"ckpt-{KILL_AT:08d}"  # appears complete: renamed from its staging folder
    pointer = run_dir / "checkpoints" / "latest"  # swapped after the rename: only then will --resume find it

    def committed() -> bool:
        try:
            return target.exists() and pointer.read_text().strip() >= target.name
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + SPEC["timeout_s"]
    while not committed() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    if proc.poll() is not None:
        pytest.fail(f"the trainer exited ({proc.returncode}) before it could be killed after step {KILL_AT}; "
                    f"raise `steps` of {SPEC['target']}:\n{proc.stderr.read()[-3000:]}")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "export").exists(), "the killed run finished anyway: kill earlier (kill_after_step)"
    resumed = subprocess.run(trainer_cmd(run_dir, "--resume"), capture_output=True, text=True,
                             timeout=SPEC["timeout_s"])
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    assert "resumed from" in resumed.stderr
    a, b = final_params(straight[0]), final_params(run_dir)
    assert a.keys() == b.keys()
    different = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not different, f"parameters differ after SIGKILL + --resume: {different}"


def test_exported_model_matches_in_memory_model_in_a_fresh_process(straight):
    export = straight[0] / "export"
    if FRAMEWORK == "tensorflow":
        code = ("import sys, json, numpy as np\nfrom pathlib import Path\nfrom ml.engine.tf.export import load_saved_model\n"
                "folder = Path(sys.argv[1])\n_, fn = load_saved_model(folder)\n"
                "sig = json.loads((folder / 'signature.json').read_text())\n"
                "g = np.load(folder / 'golden.npz', allow_pickle=False)\n"
                "got = fn(**{s['name']: g['input.' + s['name']] for s in sig['inputs']})\n"
                "bad = [s['name'] for s in sig['outputs'] if not np.allclose(got[s['name']].numpy(), "
                "g['output.' + s['name']], atol=1e-6, rtol=1e-5)]\n"
                "print('MISMATCH', bad) if bad else print('MATCH', len(sig['outputs']))\n")
    else:
        code = ("import sys, torch\nfrom pathlib import Path\nfrom ml.engine.export import load_exported, load_golden\n"
                "folder = Path(sys.argv[1])\nmodel = load_exported(folder)\ninputs, expected = load_golden(folder)\n"
                "with torch.no_grad():\n    got = model(*inputs)\ngot = got if isinstance(got, (tuple, list)) else (got,)\n"
                "bad = [i for i, (g, e) in enumerate(zip(got, expected)) if not torch.allclose(g, e, atol=1e-6, "
                "rtol=1e-5)]\nprint('MISMATCH', bad) if bad else print('MATCH', len(got))\n")
    proc = subprocess.run([sys.executable, *(["-S"] if sys.flags.no_site else []), "-c", code, str(export)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("MATCH"), proc.stdout
