#!/bin/sh
echo "mlenv: 'bazel coverage' is not supported: @remote_coverage_tools is a local stand-in (third_party/bazel_standins/README.md)." >&2
exit 1
