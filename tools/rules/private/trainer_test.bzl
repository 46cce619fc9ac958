"""Implementation of //tools/rules:trainer_test.bzl."""

load(":python.bzl", "pytest_test")

_CHECKS = "//tools/rules/private:trainer_integration_checks.py"
_RESERVED = ["--max-steps", "--checkpoint-every", "--resume", "--log-every", "run_dir=", "run_name="]

def _spec_impl(ctx):
    test = ctx.attr.test_label
    if ctx.attr.checkpoint_every < 1:
        fail("ml_trainer_integration_test(%s): checkpoint_every must be >= 1, got %d" % (test, ctx.attr.checkpoint_every))
    if ctx.attr.steps < 2 * ctx.attr.checkpoint_every:
        fail("ml_trainer_integration_test(%s): steps = %d leaves no checkpoint to resume from before the end; use steps >= %d (2 x checkpoint_every) or lower checkpoint_every" % (test, ctx.attr.steps, 2 * ctx.attr.checkpoint_every))
    for arg in ctx.attr.trainer_args:
        for reserved in _RESERVED:
            if arg.startswith(reserved) or ("=" in reserved and reserved in arg):
                fail("ml_trainer_integration_test(%s): args may not contain %r: the test sets %s itself; remove it" % (test, arg, reserved.rstrip("=")))
    kill_after = ctx.attr.checkpoint_every * max(1, (ctx.attr.steps // ctx.attr.checkpoint_every) // 2)
    spec = ctx.actions.declare_file(ctx.label.name + ".json")
    ctx.actions.write(spec, json.encode({
        "target": test,
        "trainer": ctx.executable.trainer.short_path,
        "args": ctx.attr.trainer_args,
        "steps": ctx.attr.steps,
        "checkpoint_every": ctx.attr.checkpoint_every,
        "kill_after_step": kill_after,
        "timeout_s": ctx.attr.run_timeout_s,
        "framework": ctx.attr.framework,
    }))
    return [DefaultInfo(files = depset([spec]), runfiles = ctx.runfiles(files = [spec]))]

trainer_it_spec = rule(
    implementation = _spec_impl,
    doc = "Validates an ml_trainer_integration_test's attributes and writes the spec its checks read (internal).",
    attrs = {
        "checkpoint_every": attr.int(mandatory = True),
        "framework": attr.string(default = "pytorch", values = ["pytorch", "tensorflow"]),
        "run_timeout_s": attr.int(default = 600),
        "steps": attr.int(mandatory = True),
        "test_label": attr.string(mandatory = True),
        "trainer": attr.label(mandatory = True, executable = True, cfg = "target", doc = "an engine trainer binary"),
        "trainer_args": attr.string_list(),
    },
)

_FRAMEWORK_DEPS = {
    "pytorch": ["//ml/engine"],
    "tensorflow": ["//ml/engine/tf"],
}

def ml_trainer_integration_test(name, trainer = ":train", args = [], steps = 24, checkpoint_every = 6, framework = "pytorch", size = "large", tags = [], **kwargs):
    """Runs the real trainer binary for a few steps on tiny data and checks what production relies on.

    Args:
      name: test name.
      trainer: the trainer binary (an engine trainer, e.g. `:train`).
      args: arguments passed through to the trainer (tiny data and model sizes).
      steps: optimizer steps per run (>= 2 x checkpoint_every).
      checkpoint_every: steps between checkpoints; the killed run dies after the middle one.
      framework: "pytorch" (torch checkpoint state, TorchScript/torch.export) or "tensorflow"
        (tf.train.Checkpoint via ml.engine.tf, SavedModel export); selects what the checks load.
      size: Bazel test size (default large: three trainer runs).
      tags: test tags.
      **kwargs: other py_test attributes (timeout, flaky, ...).
    """
    if framework not in _FRAMEWORK_DEPS:
        fail("ml_trainer_integration_test(%s): framework = %r; use one of %s" % (name, framework, ", ".join(sorted(_FRAMEWORK_DEPS))))
    spec = name + ".spec"
    trainer_it_spec(
        name = spec,
        test_label = "//%s:%s" % (native.package_name(), name),
        trainer = trainer,
        trainer_args = args,
        steps = steps,
        checkpoint_every = checkpoint_every,
        framework = framework,
        tags = ["manual"],
        visibility = ["//visibility:private"],
    )
    pytest_test(
        name = name,
        srcs = [_CHECKS],
        deps = _FRAMEWORK_DEPS[framework] + ["@pypi//mlflow"],
        data = [trainer, ":" + spec],
        runner_args = ["--mlenv-env=MLENV_TRAINER_IT_SPEC=$(rootpath :%s)" % spec],
        size = size,
        tags = tags,
        **kwargs
    )
