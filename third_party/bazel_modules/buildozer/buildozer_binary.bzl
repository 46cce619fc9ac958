"""The `buildozer_binary` extension @bazel_tools uses (only for `bazel mod tidy`): declares an empty repository.

`bazel mod tidy` would fail with the stub; nothing else in a build or test touches @buildozer_binary.
"""

def _empty_repo_impl(rctx):
    rctx.file("BUILD.bazel", "# Offline stub of @buildozer_binary (third_party/bazel_modules/README.md).\n")

_empty_repo = repository_rule(implementation = _empty_repo_impl)

def _buildozer_binary_impl(_module_ctx):
    _empty_repo(name = "buildozer_binary")

buildozer_binary = module_extension(implementation = _buildozer_binary_impl)
