"""The launcher: one command runs a project's trainer on this machine, on a Ray cluster or on Kubernetes.

`tools/bazel run //ml/<project>:launch -- --on local|ray|k8s [...] -- <trainer flags>`; see docs/launch.md.
Each target lives in its own module (local, k8s/...); spec.py holds what every target shares.
"""
