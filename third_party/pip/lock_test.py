"""The committed locks were made from the committed requirements.in and variant pins, by the lock tool (not
edited by hand), and every package comes from the source its variant allows."""

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
def test_lock_body_is_what_the_tool_wrote(variant):
    spec = VARIANTS[variant]
    text = lock.lock_path(WORKSPACE, spec).read_text()
    recorded = lock.recorded_digest(text, "body")
    actual = lock.body_digest(lock.split_lock(text)[1])
    assert recorded == actual, (
        f"{spec['lock']} was edited by hand after locking: its body digests to {actual}, the header records "
        f"{recorded}. A pin or hash must come from the resolver; undo the edit or relock: {lock.COMMAND}")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_package_comes_from_its_pinned_index(variant):
    spec = VARIANTS[variant]
    body = lock.split_lock(lock.lock_path(WORKSPACE, spec).read_text())[1]
    problems = lock.source_violations(body, spec)
    assert not problems, f"{spec['lock']}: packages from a source their variant does not allow:\n" + "\n".join(problems)


def test_header_names_no_machine_path():
    for variant, spec in VARIANTS.items():
        header = lock.split_lock(lock.lock_path(WORKSPACE, spec).read_text())[0]
        for link in spec.get("find_links", []):
            assert link not in header, f"the {variant} lock's header names the local folder {link}"
        assert "--find-links" not in header


def test_a_hand_edit_or_a_wrong_source_is_caught():
    spec = VARIANTS["cpu"]
    text = lock.lock_path(WORKSPACE, spec).read_text()
    head, body = lock.split_lock(text)
    edited = body.replace("--hash=sha256:", "--hash=sha256:0", 1)
    assert lock.body_digest(edited) != lock.recorded_digest(text, "body")
    numpy_from_torch_index = body.replace("# from https://pypi.org/simple", "# from " + spec["extra_index_urls"][0], 1)
    assert lock.source_violations(numpy_from_torch_index, spec)
    torch_from_pypi = body.replace(f"# from {lock.WHEELHOUSE}", "# from https://pypi.org/simple")
    torch_from_pypi = torch_from_pypi.replace(f"# from {spec['extra_index_urls'][0]}", "# from https://pypi.org/simple")
    assert any(p.startswith("torch:") for p in lock.source_violations(torch_from_pypi, spec))


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


def test_cuda_lock_has_onnxruntime_gpu_instead_of_onnxruntime_and_cpu_the_reverse():
    """replace_packages: onnxruntime and onnxruntime-gpu install the same module, so a lock has exactly one."""
    def pinned(variant):
        body = lock.split_lock(lock.lock_path(WORKSPACE, VARIANTS[variant]).read_text())[1]
        return {lock.normalize(m[1]) for m in map(lock._PIN.match, body.splitlines()) if m}
    assert VARIANTS["cuda"]["replace_packages"]["onnxruntime"].startswith("onnxruntime-gpu")
    assert "onnxruntime-gpu" in pinned("cuda") and "onnxruntime" not in pinned("cuda")
    assert "onnxruntime" in pinned("cpu") and "onnxruntime-gpu" not in pinned("cpu")
    header = lock.split_lock(lock.lock_path(WORKSPACE, VARIANTS["cuda"]).read_text())[0]
    assert "# Replaces onnxruntime with onnxruntime-gpu" in header


def test_replace_packages_applies_and_refuses_a_stale_entry():
    spec = {"replace_packages": {"onnxruntime": "onnxruntime-gpu[cuda,cudnn]==1.31.1"}}
    assert lock.replace_requirements(["torch==2.13.0", "onnxruntime==1.32.0"], spec) == [
        "torch==2.13.0", "onnxruntime-gpu[cuda,cudnn]==1.31.1"]
    assert lock.replacement_name("onnxruntime-gpu[cuda,cudnn]==1.31.1") == "onnxruntime-gpu"
    with pytest.raises(SystemExit, match="replace_packages names onnxruntime, which requirements.in does not"):
        lock.replace_requirements(["torch==2.13.0"], spec)
    base = {k: v for k, v in VARIANTS["cpu"].items() if k != "replace_packages"}
    assert lock.inputs_digest(b"x", base) == lock.inputs_digest(b"x", {**base, "replace_packages": {}})
    assert lock.inputs_digest(b"x", base) != lock.inputs_digest(b"x", {**base, **spec})


def test_digest_changes_with_inputs():
    spec = json.loads(json.dumps(VARIANTS["cpu"]))
    base = lock.inputs_digest(b"torch==2.13.0\n", spec)
    assert lock.inputs_digest(b"torch==2.13.0\nrich\n", spec) != base
    spec["torch"] = "2.14.0+cpu"
    assert lock.inputs_digest(b"torch==2.13.0\n", spec) != base
