#!/bin/sh
echo "analysis-test fixture must not run" >&2
exit 1
