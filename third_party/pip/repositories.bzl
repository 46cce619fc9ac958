"""Public entry point: the locked Python environment, for WORKSPACE.

    load("//third_party/pip:repositories.bzl", "mlenv_pip_repositories")
    mlenv_pip_repositories()   # after python_interpreter(name = "mlenv_python")

Declares @mlenv_uv (the pinned uv) and @pypi (the environment of the selected accelerator variant).
"""

load("//third_party/pip/private:pip_repository.bzl", "pip_environment", "uv_repository")

def mlenv_pip_repositories(python = "@mlenv_python//:python3"):
    uv_repository(
        name = "mlenv_uv",
        python = python,
        requirements = "//third_party/pip:uv_requirements.txt",
    )
    pip_environment(
        name = "pypi",
        python = python,
        uv = "@mlenv_uv//:uv",
    )
