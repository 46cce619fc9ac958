"""Driver of homefeed's Ray Data test: a local Ray, both trainers on 2 TorchTrainer workers with input=ray_data.

Run by ray_data_train_test.py inside a loopback-only network namespace:
    python -m ml.homefeed.testing.ray_data_driver OUT_DIR -- TRAINER_FLAGS...
Builds the Datasets the way a Ray launcher does (ml.homefeed.train.ray_datasets on the trainer flags), then for
each trainer (:train's Task loop, :train_native's hand-written loop) runs its main() in each worker, with the run
in OUT_DIR/<trainer>, and writes OUT_DIR/<trainer>-w{rank}.json: the exit code and how many batches Ray Data
handed that worker.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

TRAINERS = ("train", "train_native")


def _loop(config: dict) -> None:
    import importlib

    import ray.train

    from ml.data import ray_data

    served = [0]
    real = ray_data.torch_batches

    def counting(*args, **kwargs):
        for batch in real(*args, **kwargs):
            served[0] += 1
            yield batch

    ray_data.torch_batches = counting  # this worker process only: counts what Ray Data handed the loop
    trainer = importlib.import_module(f"ml.homefeed.{config['trainer']}")
    try:
        code = trainer.main(list(config["argv"]))
    finally:
        ray_data.torch_batches = real
    rank = ray.train.get_context().get_world_rank()
    report = Path(config["out"]) / f"{config['trainer']}-w{rank}.json"
    report.write_text(json.dumps({"code": code, "ray_batches": served[0]}))
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
            for name in TRAINERS:
                flags = [*argv, f"--set=run_name={name}", f"--set=run_dir={Path(out) / name}"]
                trainer = TorchTrainer(
                    _loop, train_loop_config={"out": out, "argv": flags, "trainer": name},
                    scaling_config=ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 0.5}),
                    datasets=datasets, dataset_config=ray_data.data_config(),
                    run_config=RunConfig(storage_path=str(Path(out) / "ray_results"), name=f"homefeed_{name}"))
                trainer.fit()
        finally:
            ray.shutdown()
    return 0


if __name__ == "__main__":
    sep = sys.argv.index("--")
    sys.exit(main(sys.argv[1], sys.argv[sep + 1:]))
