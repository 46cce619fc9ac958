"""The committed locks were made from the committed requirements.in and variant pins."""

import json
from pathlib import Path

import pytest

from third_party.pip.private import lock

WORKSPACE = Path.cwd()  # the runfiles root of this workspace
_, VARIANTS = lock.load_variants(WORKSPACE)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_lock_is_fresh(variant):
    spec = VARIANTS[variant]
    path = lock.lock_path(WORKSPACE, spec)
    assert path.exists(), f"{spec['lock']} is missing; create it with `{lock.COMMAND}`"
    expected = lock.inputs_digest((WORKSPACE / "third_party/pip/requirements.in").read_bytes(), spec)
    recorded = lock.recorded_digest(path.read_text())
    assert recorded == expected, (
        f"{spec['lock']} is stale: requirements.in or the {variant} pins in toolchains/accelerators.json "
        f"changed since it was locked (recorded {recorded}, inputs now {expected}).\n"
        f"Fix: {lock.COMMAND}")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_lock_pins_torch_build_of_variant(variant):
    spec = VARIANTS[variant]
    text = lock.lock_path(WORKSPACE, spec).read_text()
    assert f"\ntorch=={spec['torch']} " in text, f"{spec['lock']} does not pin torch=={spec['torch']}; relock: {lock.COMMAND}"


def test_cuda_lock_carries_nvidia_runtime_and_cpu_lock_does_not():
    cpu = lock.lock_path(WORKSPACE, VARIANTS["cpu"]).read_text()
    cuda = lock.lock_path(WORKSPACE, VARIANTS["cuda"]).read_text()
    assert "\nnvidia-" not in cpu, "the CPU lock must not pull nvidia-* wheels"
    assert "\nnvidia-" in cuda, "the CUDA lock should pin torch's nvidia-* runtime wheels"


def test_digest_changes_with_inputs():
    spec = json.loads(json.dumps(VARIANTS["cpu"]))
    base = lock.inputs_digest(b"torch==2.13.0\n", spec)
    assert lock.inputs_digest(b"torch==2.13.0\nrich\n", spec) != base
    spec["torch"] = "2.14.0+cpu"
    assert lock.inputs_digest(b"torch==2.13.0\n", spec) != base
