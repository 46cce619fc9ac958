"""The PyTorch adapter of the engine (process group, DDP/FSDP2, precision, checkpoint state, export).

Importing it imports torch; the framework-neutral core (ml.engine.run, config, checkpoint, tracking) does not.
See session.py for the loop a hand-written trainer writes.
"""

from ml.engine.torch.session import TorchRun

__all__ = ["TorchRun"]
