"""Keras mixed precision for the TensorFlow adapter: float32 or mixed_bfloat16, refused where it cannot run.

Why a check: Keras accepts any policy name and only fails (or silently runs slowly) deep inside the first
step. mixed_float16 needs a CUDA GPU of compute capability >= 7.0 and mixed_bfloat16 one of >= 8.0 when a
GPU is used; on CPU bfloat16 runs (TensorFlow has bf16 CPU kernels), float16 does not, so it is refused.
"""

from __future__ import annotations

from ml.engine.errors import PrecisionError

__all__ = ["POLICIES", "set_precision"]

POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")
_MIN_CC = {"mixed_bfloat16": (8, 0), "mixed_float16": (7, 0)}


def set_precision(name: str) -> str:
    """Set the global Keras dtype policy after checking the hardware; returns the policy name."""
    import keras
    import tensorflow as tf

    if name not in POLICIES:
        raise PrecisionError(f"precision {name!r} is not one of {', '.join(POLICIES)}")
    if name != "float32":
        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:
            if name == "mixed_float16":
                raise PrecisionError("mixed_float16 needs a CUDA GPU and none is visible; use mixed_bfloat16 or float32 on CPU")
        else:
            for gpu in gpus:
                cc = tf.config.experimental.get_device_details(gpu).get("compute_capability")
                if cc is not None and tuple(cc) < _MIN_CC[name]:
                    need = ".".join(map(str, _MIN_CC[name]))
                    raise PrecisionError(
                        f"{name} needs GPU compute capability >= {need}; {gpu.name} has {cc[0]}.{cc[1]}: use float32"
                    )
    keras.mixed_precision.set_global_policy(name)
    return name
