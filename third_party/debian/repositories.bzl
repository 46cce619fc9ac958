"""Public entry point: the Debian packages of the base image layer, for WORKSPACE.

    load("//third_party/debian:repositories.bzl", "mlenv_debian_repositories")
    mlenv_debian_repositories()

Declares @debian_bookworm: every .deb pinned in //third_party/debian:packages.lock.json, checked by sha256.
Nothing is downloaded until a target needs it (//third_party/debian:base_layer).
"""

load("//third_party/debian/private:deb_repository.bzl", "debian_packages")

def mlenv_debian_repositories(name = "debian_bookworm", lock = "//third_party/debian:packages.lock.json"):
    """Declares the repository of locked .deb files.

    Args:
      name: the repository name (default `debian_bookworm`).
      lock: the lock file (default //third_party/debian:packages.lock.json).
    """
    debian_packages(name = name, lock = lock)
