"""Driver of homefeed's Ray Data test: a local Ray, the trainer on 2 TorchTrainer workers with input=ray_data.

Run by ray_data_train_test.py inside a loopback-only network namespace:
    python -m ml.homefeed.testing.ray_data_driver OUT_DIR -- TRAINER_FLAGS...
Builds the Datasets the way a Ray launcher does (ml.homefeed.train.ray_datasets on the trainer flags), runs the
trainer's main() in each worker, and writes OUT_DIR/w{rank}.json: the exit code and how many batches Ray Data
handed that worker.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path


def _loop(config: dict) -> None:
    import ray.train

    from ml.homefeed import train

    served = [0]
    real = train.ray_data.torch_batches

    def counting(*args, **kwargs):
        for batch in real(*args, **kwargs):
            served[0] += 1
            yield batch

    train.ray_data.torch_batches = counting  # this worker process only: counts what Ray Data handed the loop
    code = train.main(list(config["argv"]))
    rank = ray.train.get_context().get_world_rank()
    (Path(config["out"]) / f"w{rank}.json").write_text(json.dumps({"code": code, "ray_batches": served[0]}))
    if code:
        raise RuntimeError(f"the trainer exited {code} on rank {rank}")


def main(out: str, argv: list[str]) -> int:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ml.data import ray_data
    from ml.homefeed import train

    with tempfile.TemporaryDirectory(prefix="rdh-", dir="/tmp") as tmp:
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tmp)
        try:
            datasets = train.ray_datasets(argv)
            assert set(datasets) == {ray_data.TRAIN}, datasets
            trainer = TorchTrainer(
                _loop, train_loop_config={"out": out, "argv": argv},
                scaling_config=ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 0.5}),
                datasets=datasets, dataset_config=ray_data.data_config(),
                run_config=RunConfig(storage_path=str(Path(out) / "ray_results"), name="homefeed_ray_data"))
            trainer.fit()
        finally:
            ray.shutdown()
    return 0


if __name__ == "__main__":
    sep = sys.argv.index("--")
    sys.exit(main(sys.argv[1], sys.argv[sep + 1:]))
