"""Public entry point: the pinned lint tools, for WORKSPACE.

    load("//tools/lint:repositories.bzl", "mlenv_lint_repositories")
    mlenv_lint_repositories()   # after python_interpreter(name = "mlenv_python")

Declares @mlenv_buildifier (`@mlenv_buildifier//:buildifier`) and @mlenv_ruff (`@mlenv_ruff//:ruff`);
versions and hashes live in //tools/lint:tool_pins.json. Fetched only when a lint target needs them.
"""

load("//tools/lint/private:tools.bzl", "buildifier_repository", "ruff_repository")

def mlenv_lint_repositories(python = "@mlenv_python//:python3"):
    buildifier_repository(name = "mlenv_buildifier")
    ruff_repository(name = "mlenv_ruff", python = python)
