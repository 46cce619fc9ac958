"""`--on ray`: the trainer's ranks as Ray Train workers of a job submitted through the Ray Jobs API.

job.py turns a LaunchSpec into the job spec (entrypoint, runtime_env, scaling); driver.py is that
entrypoint (TorchTrainer over the trainer's main); submit.py talks to the Jobs API (address check, submit,
follow, stop); cluster.py starts and tears down a throwaway local cluster for `--address local`.
"""
