"""tf.distribute strategy selection from the same torchrun-style environment the PyTorch path uses.

Why: the launcher (``--nproc``, torchrun, Ray Train) starts N processes and tells each one RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT. TensorFlow wants a TF_CONFIG naming every worker's address instead, so this
module derives one from those variables: on one host (the ``--nproc`` case) worker i listens on
MASTER_ADDR:MASTER_PORT+1+i; across hosts the launcher must pass MLENV_TF_WORKERS (comma-separated
host:port, one per rank), because torchrun's variables do not carry the other hosts' addresses.

Keras 3's ``model.fit`` fails under MultiWorkerMirroredStrategy with TF 2.21 (keras#20585, measured in
shared/notes/services.md); :func:`fit_supported` lets a trainer choose ``fit`` for one process and its own
``strategy.run`` loop across processes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

from ml.engine.errors import DistributedError

__all__ = ["ProcessEnv", "barrier", "fit_supported", "process_env", "select_strategy", "tf_config"]


@dataclass(frozen=True)
class ProcessEnv:
    """Where this process sits in the job, read from the launcher's environment."""

    rank: int
    world_size: int
    master_addr: str
    master_port: int
    workers: tuple[str, ...]  # host:port of every rank (empty when world_size == 1)


def _int_var(env: Mapping[str, str], name: str, default: int | None) -> int:
    raw = env.get(name)
    if raw is None:
        if default is None:
            raise DistributedError(f"{name} is not set; the launcher (torchrun, --nproc, Ray Train) sets it")
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistributedError(f"{name}={raw!r} is not an integer; the launcher sets it to a number") from None


def process_env(env: Mapping[str, str] | None = None) -> ProcessEnv:
    """Rank, world size and every worker's address, validated; one process when WORLD_SIZE is unset."""
    env = os.environ if env is None else env
    world = _int_var(env, "WORLD_SIZE", 1)
    rank = _int_var(env, "RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise DistributedError(f"RANK={rank} WORLD_SIZE={world}: need WORLD_SIZE >= 1 and 0 <= RANK < WORLD_SIZE")
    if world == 1:
        return ProcessEnv(0, 1, env.get("MASTER_ADDR", "127.0.0.1"), _int_var(env, "MASTER_PORT", 0), ())
    addr = env.get("MASTER_ADDR")
    if not addr:
        raise DistributedError("WORLD_SIZE > 1 but MASTER_ADDR is not set; the launcher sets it (torchrun-style env)")
    port = _int_var(env, "MASTER_PORT", None)
    listed = env.get("MLENV_TF_WORKERS", "").strip()
    if listed:
        workers = tuple(w.strip() for w in listed.split(","))
        if len(workers) != world or any(":" not in w or not w.rsplit(":", 1)[1].isdigit() for w in workers):
            raise DistributedError(
                f"MLENV_TF_WORKERS={listed!r} must list exactly WORLD_SIZE={world} host:port entries, one per rank"
            )
    else:
        local_world = _int_var(env, "LOCAL_WORLD_SIZE", world)
        if local_world != world:
            raise DistributedError(
                f"{world} processes over several hosts (LOCAL_WORLD_SIZE={local_world}): TensorFlow needs every "
                "worker's address; set MLENV_TF_WORKERS=host:port,... (one per rank)"
            )
        if port + world >= 65536:
            raise DistributedError(f"MASTER_PORT={port} leaves no room for {world} worker ports above it; pick a lower one")
        workers = tuple(f"{addr}:{port + 1 + i}" for i in range(world))
    return ProcessEnv(rank, world, addr, port, workers)


def tf_config(penv: ProcessEnv) -> str:
    """The TF_CONFIG JSON for this process (workers in rank order, task index = rank)."""
    return json.dumps({"cluster": {"worker": list(penv.workers)}, "task": {"type": "worker", "index": penv.rank}})


def select_strategy(env: Mapping[str, str] | None = None):
    """(strategy, ProcessEnv): the default strategy for one process, MultiWorkerMirroredStrategy for several.

    Sets TF_CONFIG in os.environ before creating the multi-worker strategy (TensorFlow reads it there); an
    existing TF_CONFIG that disagrees with the launcher's ranks is refused rather than silently replaced.
    """
    import tensorflow as tf

    penv = process_env(env)
    if penv.world_size == 1:
        return tf.distribute.get_strategy(), penv
    wanted = tf_config(penv)
    existing = os.environ.get("TF_CONFIG")
    if existing and json.loads(existing) != json.loads(wanted):
        raise DistributedError(
            f"TF_CONFIG is already set to {existing} but the launcher's environment gives {wanted}; unset TF_CONFIG "
            "and let the adapter derive it"
        )
    os.environ["TF_CONFIG"] = wanted
    return tf.distribute.MultiWorkerMirroredStrategy(), penv


def fit_supported(strategy) -> bool:
    """Whether Keras ``model.fit`` works under this strategy here (not under MultiWorkerMirroredStrategy)."""
    import tensorflow as tf

    return not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def barrier(strategy):
    """A callable that returns once every worker of ``strategy`` has called it (an all-reduce of ones).

    Hand it to ``run.set_barrier`` so checkpoint folders are committed only after every rank wrote.
    """
    import tensorflow as tf

    def wait() -> None:
        if strategy.num_replicas_in_sync > 1:
            ones = strategy.run(lambda: tf.ones([], tf.int32))
            strategy.reduce(tf.distribute.ReduceOp.SUM, ones, axis=None).numpy()

    return wait
