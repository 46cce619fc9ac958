"""The engine's one exception tree. Every error says what was wrong and how to fix it.

    EngineError
    ├── ConfigError        a flag, --set override or config value is unknown or invalid
    ├── PrecisionError     a precision the device cannot run (fp16 on CPU)
    ├── DistributedError   a bad process group environment or a failed worker
    ├── CheckpointError    an unreadable checkpoint, or one from another config
    └── ExportError        the model could not be exported or does not match its golden batch

Third-party errors (torch, MLflow, OS) are wrapped with `raise ... from exc`. Tracking failures are not
errors: the run goes on and keeps its metrics locally (see tracking.py).
"""

__all__ = ["CheckpointError", "ConfigError", "DistributedError", "EngineError", "ExportError", "PrecisionError"]


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class ConfigError(EngineError, ValueError):
    """A flag, --set override or config value is unknown or invalid."""


class PrecisionError(EngineError):
    """The requested precision cannot run on this device."""


class DistributedError(EngineError):
    """The distributed environment is inconsistent, or a worker process failed."""


class CheckpointError(EngineError):
    """A checkpoint cannot be read or does not belong to this run's config."""


class ExportError(EngineError):
    """Export failed, or the exported model disagrees with the eager model."""
