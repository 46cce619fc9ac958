"""The environment gate's checks against faked probes (no GPU needed), plus one real probe."""

import pytest

from toolchains.cuda import gate

MIN = {"12": "525.60.13", "13": "580.65.06"}
H100 = gate.Gpu(0, "NVIDIA H100 80GB HBM3", (9, 0))


def cuda_probe(**overrides):
    base = dict(variant="cuda", torch_version="2.13.0", torch_cuda="13.0",
                torch_arch_list=["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"],
                driver_version="580.82.07", driver_cuda=(13, 0), gpus=[H100])
    base.update(overrides)
    return gate.Probe(**base)


def problems(probe, **kwargs):
    return gate.check(probe, min_driver=MIN, **kwargs)


def test_healthy_cuda_machine_passes():
    assert problems(cuda_probe(), require_gpus=1) == []


def test_cpu_torch_in_cuda_config_is_caught_with_fix():
    [p] = problems(cuda_probe(torch_cuda=None, torch_arch_list=[], torch_version="2.13.0+cpu"))
    assert p.check == "torch build" and "CPU-only torch (2.13.0+cpu) in the CUDA config" in p.found
    assert "--config=cuda" in p.fix


def test_gpu_test_on_cpu_environment_is_caught():
    probe = cuda_probe(variant="cpu", torch_cuda=None, torch_arch_list=[])
    assert any("--config=gpu" in p.fix for p in problems(probe, require_gpus=1))


def test_no_driver_fails_loudly_naming_why():
    [p] = problems(cuda_probe(driver_version=None, driver_cuda=None, gpus=[], driver_error="nvidia-smi not on PATH"),
                   require_gpus=1)
    assert p.check == "driver" and "nvidia-smi not on PATH" in p.found and "drop --config=gpu" in p.fix


def test_too_few_gpus():
    [p] = problems(cuda_probe(), require_gpus=2)
    assert p.found == "1 GPU(s) visible" and p.expected == "at least 2"


def test_driver_older_than_runtime_major():
    [p] = problems(cuda_probe(driver_version="535.104.05", driver_cuda=(12, 2)))
    assert p.check == "driver vs CUDA runtime" and "CUDA 12.2" in p.found and ">= 580.65.06" in p.fix


def test_driver_below_minor_version_compat_minimum():
    [p] = problems(cuda_probe(torch_cuda="12.8", driver_version="520.61.05", driver_cuda=(12, 0)))
    assert ">= 525.60.13" in p.expected


@pytest.mark.parametrize("capability,arch,ok", [
    ((9, 0), ["sm_80", "sm_90"], True),
    ((8, 9), ["sm_80", "sm_90"], True),       # sm_80 cubin runs on 8.9 (same major, higher minor)
    ((7, 0), ["sm_75", "sm_80"], False),      # Volta is older than every shipped arch
    ((12, 1), ["sm_90", "compute_120"], True),  # PTX for 12.0 JIT-compiles on 12.1
    ((10, 0), ["sm_90a"], False),             # arch-specific cubins only run on their exact chip
    ((9, 0), ["sm_90a"], True),
])
def test_compute_capability_against_arch_list(capability, arch, ok):
    probe = cuda_probe(torch_arch_list=arch, gpus=[gate.Gpu(0, "gpu", capability)])
    found = [p for p in problems(probe) if p.check == "compute capability"]
    assert (not found) == ok, found


def test_cpu_environment_without_gpu_requirement_has_nothing_to_check():
    probe = cuda_probe(variant="cpu", torch_cuda=None, torch_arch_list=[], driver_version=None, driver_cuda=None, gpus=[])
    assert problems(probe) == []


def test_real_probe_on_this_machine_is_consistent():
    probe = gate.probe()
    assert probe.variant in ("cpu", "cuda")
    if probe.driver_version is None:
        assert probe.driver_error  # says why
        assert gate.check(probe, require_gpus=1)  # a GPU requirement then fails loudly, never passes silently
