#!/usr/bin/env bash
# Bazel's --workspace_status_command (.bazelrc): the git commit recorded in bundles and images.
# STABLE_GIT_COMMIT is part of the cache key of the actions that read it (image configs: a new commit gives a
# new image config, so an image always names the commit it was built at). GIT_COMMIT is volatile: Bazel
# never reruns an action because it changed, so a bundle records the commit at which its bytes were built
# and stays byte-identical (and its image layer unchanged) until its real inputs change.
set -euo pipefail
commit="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
if [[ "${commit}" != unknown && -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
  commit="${commit}-dirty"
fi
echo "STABLE_GIT_COMMIT ${commit}"
echo "GIT_COMMIT ${commit}"
