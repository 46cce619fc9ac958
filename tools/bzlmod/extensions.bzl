"""The one module extension of MODULE.bazel: every repository WORKSPACE declares, for Bazel 7+ with Bzlmod.

    mlenv = use_extension("//tools/bzlmod:extensions.bzl", "mlenv")
    use_repo(mlenv, "mlenv_python", "pypi", ...)

It calls the same repository rules and macros as WORKSPACE (one definition for both modes), in one extension
because the repositories refer to each other by name: @pypi and @mlenv_ruff read
`@mlenv_python//:interpreter_path.txt`, @pypi runs `@mlenv_uv//:uv`. Repositories made by one extension see
each other under these names, so the macros' default labels keep working unchanged.

The local stand-ins for @rules_cc, @rules_java and @remote_coverage_tools are declared too: Bazel itself gets
its own rules_cc/rules_java modules under Bzlmod, but //tools/testing:standins copies ours into every sample
workspace a test builds (those samples run in WORKSPACE mode under any Bazel version).
"""

load("@bazel_tools//tools/build_defs/repo:local.bzl", "local_repository")
load("//third_party/debian:repositories.bzl", "mlenv_debian_repositories")
load("//third_party/pip:repositories.bzl", "mlenv_pip_repositories")
load("//toolchains/python:repositories.bzl", "python_interpreter")
load("//tools/lint:repositories.bzl", "mlenv_lint_repositories")

STANDINS = ["rules_cc", "rules_java", "remote_coverage_tools"]

def _mlenv_impl(module_ctx):
    workspace = module_ctx.path(Label("//:WORKSPACE")).dirname
    for name in STANDINS:
        local_repository(name = name, path = str(workspace.get_child("third_party").get_child("bazel_standins").get_child(name)))
    python_interpreter(name = "mlenv_python")
    mlenv_pip_repositories()
    mlenv_debian_repositories()
    mlenv_lint_repositories()

mlenv = module_extension(
    implementation = _mlenv_impl,
    doc = "The repositories of WORKSPACE (interpreter, @pypi, @debian_bookworm, lint tools, stand-ins), for Bzlmod.",
    # The interpreter is found on the host and @pypi's variant comes from the environment, like WORKSPACE mode.
    environ = ["MLENV_PYTHON", "MLENV_ACCELERATOR", "PATH"],
)
