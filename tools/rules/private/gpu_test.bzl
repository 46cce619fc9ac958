"""Implementation of //tools/rules:gpu_test.bzl."""

load(":python.bzl", "pytest_test")

_GPU_TAGS = ["gpu", "requires-gpu-nvidia"]
_MAX_GPUS = 16

def _gpu_test_spec_impl(ctx):
    test = ctx.attr.test_label
    if ctx.attr.gpus < 1:
        fail("ml_gpu_test(%s): gpus must be >= 1, got %d; use ml_py_test for tests that need no GPU" % (test, ctx.attr.gpus))
    if ctx.attr.gpus > _MAX_GPUS:
        fail("ml_gpu_test(%s): gpus = %d is more than any machine here has (max %d); split the test or lower gpus" % (test, ctx.attr.gpus, _MAX_GPUS))
    if "exclusive" in ctx.attr.user_tags:
        fail("ml_gpu_test(%s): tag 'exclusive' is not needed and serialises every test of the build: GPU tests lock their own devices (one test per GPU); drop the tag" % test)
    spec = ctx.actions.declare_file(ctx.label.name + ".json")
    ctx.actions.write(spec, json.encode({"target": test, "gpus": ctx.attr.gpus, "cpu_fallback": ctx.attr.cpu_fallback}))
    return [DefaultInfo(files = depset([spec]), runfiles = ctx.runfiles(files = [spec]))]

gpu_test_spec = rule(
    implementation = _gpu_test_spec_impl,
    doc = "Validates an ml_gpu_test's attributes and writes the spec its runner reads (internal).",
    attrs = {
        "cpu_fallback": attr.bool(doc = "whether a `<name>_cpu` variant exists"),
        "gpus": attr.int(mandatory = True, doc = "GPUs the test needs, locked for its whole run"),
        "test_label": attr.string(mandatory = True, doc = "the user-facing test label, for messages"),
        "user_tags": attr.string_list(doc = "the tags the user gave the test"),
    },
)

def ml_gpu_test(name, srcs, deps = [], gpus = 1, cpu_fallback = False, tags = [], data = [], args = [], size = "medium", **kwargs):
    """A pytest test that needs NVIDIA GPUs. See docs/rules.md.

    Tagged `gpu` and `requires-gpu-nvidia`: excluded from the default suite, selected by --config=gpu.
    Its runner locks `gpus` devices (one test per GPU at a time), runs the environment gate and fails
    loudly when no usable GPU is there. `cpu_fallback = True` adds `<name>_cpu`, the same test on CPU
    in the default suite (tests read the device from $MLENV_TEST_DEVICE).
    """
    spec = name + ".gpu_spec"
    label = "//%s:%s" % (native.package_name(), name)
    gpu_test_spec(
        name = spec,
        test_label = label,
        gpus = gpus,
        cpu_fallback = cpu_fallback,
        user_tags = tags,
        tags = ["manual"],
        visibility = ["//visibility:private"],
    )
    pytest_test(
        name = name,
        srcs = srcs,
        deps = deps + ["//toolchains/cuda:gate"],
        data = data + [":" + spec, "@pypi//:manifest.json"],
        args = args,
        runner = "//tools/rules/private:gpu_test_main.py",
        runner_args = ["--mlenv-gpu-spec=$(rootpath :%s)" % spec],
        size = size,
        tags = tags + [t for t in _GPU_TAGS if t not in tags],
        **kwargs
    )
    if cpu_fallback:
        pytest_test(
            name = name + "_cpu",
            srcs = srcs,
            deps = deps,
            data = data,
            args = args,
            runner_args = ["--mlenv-env=MLENV_TEST_DEVICE=cpu", "--mlenv-env=MLENV_TEST_GPUS=%d" % gpus],
            size = size,
            tags = [t for t in tags if t not in _GPU_TAGS],
            **kwargs
        )
