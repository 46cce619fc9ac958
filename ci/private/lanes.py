"""The commands presubmit runs for a Selection: lint, images, the CPU lane and (with --gpu) the GPU lane.

A Plan is data: `--dry-run` prints it, a real run executes exactly the same argv lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ci.private.selection import Selection

__all__ = ["IMAGE_REPRO_TAG", "IMAGE_TAG", "Lane", "Plan", "plan"]

IMAGE_TAG = "mlenv_image"  # an image target: `bazel build` when affected
IMAGE_REPRO_TAG = "mlenv_image_repro"  # its reproducibility test: runs in the CPU lane, reported under images
GPU_TAG = "gpu"
MANUAL_TAG = "manual"


@dataclass
class Lane:
    """One Bazel invocation.

    name: "images", "cpu" or "gpu".
    verb: "build" or "test".
    flags: Bazel flags (also used for `bazel info bazel-testlogs` to find this lane's JUnit XML).
    targets: what it builds or tests.
    tests: the test targets expected to write test.xml.
    """

    name: str
    verb: str
    flags: list[str]
    targets: list[str]
    tests: list[str] = field(default_factory=list)

    def argv(self, bazel_command) -> list[str]:
        return bazel_command(self.verb, *self.flags, *self.targets)


@dataclass
class Plan:
    """Lanes to run, and what was deliberately not run (with why)."""

    lanes: list[Lane]
    skipped: list[str]
    image_targets: list[str]
    image_repro_tests: list[str]


def plan(selection: Selection, always_test: list[str], gpu: bool, base_flags: list[str]) -> Plan:
    rules = selection.rules.values()
    manual = sorted(r.label for r in rules if MANUAL_TAG in r.tags and IMAGE_TAG not in r.tags)
    images = sorted(r.label for r in rules if IMAGE_TAG in r.tags)
    active = [r for r in rules if MANUAL_TAG not in r.tags and IMAGE_TAG not in r.tags]
    gpu_tests = sorted(r.label for r in active if r.is_test and GPU_TAG in r.tags)
    cpu_tests = sorted({r.label for r in active if r.is_test and GPU_TAG not in r.tags} | set(always_test))
    repro = sorted(r.label for r in active if r.is_test and IMAGE_REPRO_TAG in r.tags)
    skipped = []
    if manual:
        skipped.append(f"{len(manual)} affected target(s) tagged manual (never built by //...): " + _few(manual))

    lanes = []
    if images:
        lanes.append(Lane("images", "build", base_flags, images))
    if selection.everything:
        lanes.append(Lane("cpu", "test", base_flags, ["//..."], cpu_tests))
    else:
        # GPU tests are named too: built (like //... builds them) but not run, by .bazelrc's -gpu tag filter.
        targets = sorted({r.label for r in active} | set(always_test))
        lanes.append(Lane("cpu", "test", base_flags, targets, cpu_tests))
    if gpu_tests and gpu:
        lanes.append(Lane("gpu", "test", [*base_flags, "--config=gpu"],
                          ["//..."] if selection.everything else gpu_tests, gpu_tests))
    elif gpu_tests:
        skipped.append(f"GPU lane: {len(gpu_tests)} affected GPU test(s) not run (pass --gpu on a GPU machine): "
                       + _few(gpu_tests))
    return Plan(lanes, skipped, images, repro)


def _few(labels: list[str], limit: int = 5) -> str:
    return ", ".join(labels[:limit]) + (f", ... ({len(labels) - limit} more)" if len(labels) > limit else "")

