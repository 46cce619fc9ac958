"""mlenv's engine runtime: the library every project's trainer (and later server) imports.

Modules: config (dataclass -> flags), trainer (the loop and `run`), tracking (MLflow + local fallback),
checkpoint (atomic, exact resume), precision (fp32/bf16/fp16), distributed (DDP launch and init),
export (TorchScript / torch.export + signature + golden batch), metrics, progress, errors.
No project-specific code lives here.
"""
