"""Driver of the Ray Data input test: a local Ray, a 2-worker TorchTrainer, 2 epochs read through ml.data.ray_data.

Run by ray_data_test.py inside a loopback-only network namespace (Ray listens on every interface):
    python -m ml.data.testing.ray_data_worker SHARDS_DIR OUT_DIR
Each worker writes, per epoch, every batch it got (as numpy) to OUT_DIR/w{rank}-e{epoch}.npz plus the tensor
dtypes/shapes and batch sizes to a JSON file; the test compares them with the in-process reader.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

SEED = 3
BATCH_SIZE = 64
EPOCHS = 2
WORKERS = 2


def _loop(config: dict) -> None:
    import numpy as np
    import ray.train
    import torch

    from ml.data import ray_data

    rank = ray.train.get_context().get_world_rank()
    out = Path(config["out"])
    for epoch in range(EPOCHS):
        batches = list(ray_data.torch_batches(BATCH_SIZE, epoch=epoch, seed=SEED, drop_last=False))
        meta = {"sizes": [len(b["item_id"]) for b in batches],
                "kinds": {k: [type(v).__name__, str(v.dtype), list(v.shape[1:])] for k, v in batches[0].items()},
                "all_tensors": all(isinstance(v, torch.Tensor) for b in batches for v in b.values())}
        arrays = {k: np.concatenate([b[k].numpy() for b in batches]) for k in batches[0]}
        np.savez(out / f"w{rank}-e{epoch}.npz", **arrays)
        (out / f"w{rank}-e{epoch}.json").write_text(json.dumps(meta))


def main(shards: str, out: str) -> int:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ml.data import ray_data

    with tempfile.TemporaryDirectory(prefix="rd-", dir="/tmp") as tmp:
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tmp, log_to_driver=True)
        try:
            # Fractional CPUs everywhere: Ray Data tasks need room next to the Train workers or they never run.
            trainer = TorchTrainer(
                _loop, train_loop_config={"out": out},
                scaling_config=ScalingConfig(num_workers=WORKERS, use_gpu=False, resources_per_worker={"CPU": 0.5}),
                datasets=ray_data.datasets_for(shards, seed=SEED, num_cpus=0.5),
                dataset_config=ray_data.data_config(),
                run_config=RunConfig(storage_path=str(Path(out) / "ray_results"), name="ray_data_test"))
            trainer.fit()
        finally:
            ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
