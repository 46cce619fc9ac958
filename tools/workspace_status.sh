#!/usr/bin/env bash
# Bazel's --workspace_status_command (.bazelrc): the git commit recorded in bundles and images.
# STABLE_GIT_COMMIT is part of the cache key of the actions that read it (image configs: a new commit gives a
# new image config, so an image always names the commit it was built at). GIT_COMMIT is volatile: Bazel
# never reruns an action because it changed, so a bundle records the commit at which its bytes were built
# and stays byte-identical (and its image layer unchanged) until its real inputs change.
#
# Bazel also writes BUILD_HOST and BUILD_USER (stable) and BUILD_TIMESTAMP (volatile) into these files, and a
# remote cache keys an action on every byte of its inputs, status files included (bazelbuild/bazel#10075):
# with Bazel's values, an action reading the volatile file (a bundle) never hits a remote cache, and one
# reading the stable file (an image config) hits only on the same host as the same user. Keys printed here
# replace Bazel's, so they are per commit: the host and user are constant (no output records them) and the
# time is the commit's (as SOURCE_DATE_EPOCH is for reproducible builds). Outside git, Bazel's own stand.
set -euo pipefail
commit="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
if [[ "${commit}" != unknown && -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
  commit="${commit}-dirty"
fi
echo "STABLE_GIT_COMMIT ${commit}"
echo "GIT_COMMIT ${commit}"
if [[ "${commit}" != unknown ]]; then
  echo "BUILD_HOST mlenv"
  echo "BUILD_USER mlenv"
  echo "BUILD_TIMESTAMP $(git log -1 --format=%ct 2>/dev/null || echo 0)"
fi
