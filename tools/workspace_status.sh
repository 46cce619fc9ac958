#!/usr/bin/env bash
# Bazel's --workspace_status_command (.bazelrc): stable keys recorded in bundles and images.
# STABLE_* keys are part of the cache key of the actions that read them (bundles): a new commit rebuilds them.
set -euo pipefail
commit="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
if [[ "${commit}" != unknown && -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
  commit="${commit}-dirty"
fi
echo "STABLE_GIT_COMMIT ${commit}"
