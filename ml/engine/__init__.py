"""mlenv's engine: the services every project's training loop uses, in two layers.

Framework-neutral core (target //ml/engine:core; imports neither torch nor TensorFlow): run (the run object a
loop opens: run folder, rank rules, tracking, TensorBoard, progress, SIGTERM -> should_stop, checkpoint
folders, results), config (dataclass -> flags), checkpoint (atomic checkpoint folders, config digest),
tracking (MLflow + local fallback), tensorboard, progress, metrics, errors.

PyTorch (target //ml/engine): torch/ (the adapter: process group, DDP / FSDP2, precision, checkpoint state,
export), trainer (the ready-made `Task` loop, a client of the adapter), distributed (launch and process group
init), precision, export. No project-specific code lives here.
"""

import os as _os

# MLflow 3 sends usage telemetry to mlflow-telemetry.io unless told not to (its own check: this variable,
# DO_NOT_TRACK, or a CI/pytest environment). A company's training runs must not phone home: every trainer,
# sweep and bundle build imports the engine before MLflow. An explicit setting wins.
_os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
