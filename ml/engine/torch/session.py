"""The PyTorch adapter: the framework parts a native PyTorch loop calls, on top of the neutral run object.

    from ml.engine import run
    from ml.engine.torch import TorchRun

    with run.start(config, project="myproject") as r, TorchRun(r, config) as t:
        model = t.wrap(build_model())                      # device, then DDP or FSDP2 (--strategy)
        opt = torch.optim.AdamW(model.parameters(), lr=config.lr)
        resumed = t.restore(model, {"opt": opt})           # None, or the checkpoint (RNG restored too)
        for step in ...:                                   # a plain for loop
            with t.autocast():                             # --precision
                loss = ...
            t.backward_and_step(loss, opt, model.parameters(), config.grad_clip)
            if step % config.checkpoint_every == 0 or t.should_stop():
                t.save(step, model, {"opt": opt}, meta={"epoch": e, "batch_in_epoch": b})
        t.export(model, inputs, input_names, output_names, build=build_model)

Process group: joined from the launcher's environment (torchrun / `--nproc` variables) through
ml.engine.distributed; a group that already exists (Ray Train's TorchTrainer creates one) is reused and left
open at the end. Strategies: `ddp` (DistributedDataParallel; every rank holds the whole model) and `fsdp`
(FSDP2, `torch.distributed.fsdp.fully_shard`: parameters, gradients and optimizer state sharded across ranks;
sharded checkpoints through torch.distributed.checkpoint). A checkpoint restores only under the strategy and
world size that wrote it (exact resume needs each rank's RNG and data shard); anything else is refused with
the fix.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ml.engine import distributed
from ml.engine.checkpoint import Checkpoint
from ml.engine.errors import CheckpointError, ConfigError, ExportError
from ml.engine.export import ExportResult, export_model
from ml.engine.precision import Precision
from ml.engine.run import Run
from ml.engine.torch.state import capture_rng, restore_rng, torch_load

__all__ = ["TorchRun"]

STRATEGIES = ("ddp", "fsdp")


def _reuse_group(device: str, local_rank: int) -> distributed.DistContext:
    """A DistContext for a process group someone else (Ray Train) already initialised."""
    rank, world = dist.get_rank(), dist.get_world_size()
    selected = distributed._select_device(device, local_rank)
    return distributed.DistContext(rank, local_rank, world, selected, dist.get_backend())


class TorchRun:
    """Device, process group, strategy wrapping, precision, checkpoint state and export for one rank."""

    def __init__(self, run: Run, config: Any) -> None:
        self.run = run
        self.config = config
        self.strategy = getattr(config, "strategy", "ddp")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy {self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        if self.strategy == "fsdp" and run.world_size < 2:
            raise ConfigError("--strategy fsdp shards the model across processes but this run has 1; use --nproc 2 "
                              "or more (or torchrun), or --strategy ddp for a single process")
        self._owns_group = not (dist.is_available() and dist.is_initialized())
        self.ctx = distributed.init(getattr(config, "device", "auto")) if self._owns_group else \
            _reuse_group(getattr(config, "device", "auto"), run.local_rank)
        if self.ctx.world_size != run.world_size:
            raise ConfigError(f"the process group has {self.ctx.world_size} ranks but the environment says "
                              f"WORLD_SIZE={run.world_size}; launch with torchrun, --nproc or Ray Train, not a mix")
        self.device = self.ctx.device
        self.extra: dict[str, Any] = {}  # the `extra` of the restored checkpoint
        self.precision = Precision.create(getattr(config, "precision", "fp32"), self.device)
        run.set_barrier(self.ctx.barrier)
        run.set_tags({"mlenv.device": str(self.device), "mlenv.torch": torch.__version__,
                      "mlenv.strategy": self.strategy})

    # -- context -----------------------------------------------------------------------------------------
    def __enter__(self) -> TorchRun:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.run.set_barrier(lambda: None)
        if self._owns_group:
            distributed.shutdown(self.ctx)

    @property
    def rank(self) -> int:
        return self.ctx.rank

    @property
    def world_size(self) -> int:
        return self.ctx.world_size

    # -- model -------------------------------------------------------------------------------------------
    def wrap(self, model: torch.nn.Module, *, shard: list[torch.nn.Module] | None = None) -> torch.nn.Module:
        """Moves `model` to the device and applies the strategy. Build optimizers AFTER this call.

        ddp: returns DistributedDataParallel(model) when world size > 1 (the model itself otherwise).
        fsdp: shards each module of `shard` (default: every direct child holding parameters), then the root,
        in place; returns the same (now sharded) module.
        """
        model = model.to(self.device)
        if self.world_size == 1:
            return model
        if self.strategy == "ddp":
            return torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy()
        for module in shard if shard is not None else [m for m in model.children()
                                                        if any(True for _ in m.parameters())]:
            fully_shard(module, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        return model

    @staticmethod
    def unwrap(model: torch.nn.Module) -> torch.nn.Module:
        return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model

    # -- step --------------------------------------------------------------------------------------------
    def autocast(self):
        return self.precision.autocast()

    def backward_and_step(self, loss: torch.Tensor, optimizers, parameters, grad_clip: float | None) -> torch.Tensor | None:
        """Backward (scaled under fp16), optional clipping of the global gradient norm over `parameters`, then a
        step of every optimizer (one, or a list: e.g. dense layers and embedding tables) and zero_grad."""
        opts = list(optimizers) if isinstance(optimizers, (list, tuple)) else [optimizers]
        if len(opts) == 1:
            return self.precision.backward_and_step(loss, opts[0], parameters, grad_clip)
        scaler = self.precision.scaler
        norm = None
        if scaler is not None:
            scaler.scale(loss).backward()
            if grad_clip is not None:
                for opt in opts:
                    scaler.unscale_(opt)
        else:
            loss.backward()
        if grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(list(parameters), grad_clip)
        for opt in opts:
            if scaler is not None:
                scaler.step(opt)
            else:
                opt.step()
        if scaler is not None:
            scaler.update()
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        return norm

    def all_reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        return self.ctx.all_reduce_mean(value)

    def barrier(self) -> None:
        self.ctx.barrier()

    def should_stop(self, step: int | None = None, *, every: int = 1) -> bool:
        """True on every rank once any rank got SIGTERM/SIGINT, so all ranks checkpoint at the same step and
        leave together. With world size > 1 this is one tiny all-reduce; pass the step and `every` to agree
        only every N steps (every rank must call it at the same steps)."""
        local = self.run.should_stop
        if self.world_size == 1:
            return local
        if step is not None and step % every:
            return False
        flag = torch.tensor([1.0 if local else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() > 0:
            self.run.request_stop()
            return True
        return False

    # -- checkpoints -------------------------------------------------------------------------------------
    def save(self, step: int, model: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer], *,
             schedulers: dict[str, Any] | None = None, meta: dict[str, Any] | None = None,
             extra: dict[str, Any] | None = None) -> Path:
        """Writes a checkpoint of step `step` on every rank (a collective: call it on all ranks)."""
        schedulers = schedulers or {}
        scaler = self.precision.scaler.state_dict() if self.precision.scaler is not None else None
        full_meta = {"strategy": self.strategy, **(meta or {})}
        rng = capture_rng()
        with self.run.checkpoint_writer(step, full_meta) as staging:
            if self.strategy == "fsdp":
                import torch.distributed.checkpoint as dcp
                from torch.distributed.checkpoint.state_dict import get_state_dict

                model_sd, optim_sd = get_state_dict(model, list(optimizers.values()))
                dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(staging / "model"))
                torch.save(rng, staging / f"rng-{self.rank}.pt")
                if self.run.is_primary:
                    torch.save({"schedulers": {k: s.state_dict() for k, s in schedulers.items()}, "scaler": scaler,
                                "extra": extra or {}}, staging / "train_state.pt")
            else:
                rng_per_rank = [None] * self.world_size
                if self.world_size > 1:
                    dist.all_gather_object(rng_per_rank, rng)
                else:
                    rng_per_rank = [rng]
                if self.run.is_primary:
                    torch.save({"model": self.unwrap(model).state_dict(),
                                "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                                "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
                                "scaler": scaler, "rng_per_rank": rng_per_rank, "extra": extra or {}},
                               staging / "state.pt")
        return self.run.store.folder / self.run.store.name(step)

    def restore(self, model: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer], *,
                schedulers: dict[str, Any] | None = None, checkpoint: Checkpoint | None = None) -> Checkpoint | None:
        """Loads `checkpoint` (default: the run's --resume point) into model, optimizers, schedulers, grad
        scaler and this rank's RNG. Returns the checkpoint (its meta holds the data position), or None."""
        ckpt = checkpoint if checkpoint is not None else self.run.resume_from
        if ckpt is None:
            return None
        written = ckpt.meta.get("strategy", "ddp")
        if written != self.strategy:
            raise CheckpointError(f"checkpoint {ckpt.path} was written with --strategy {written}, this run uses "
                                  f"--strategy {self.strategy}; resume with --strategy {written}, or start a new "
                                  f"--run-dir")
        world = ckpt.meta.get("world_size", 1)
        if world != self.world_size:
            raise CheckpointError(
                f"checkpoint {ckpt.path} was written by {world} processes, this run has {self.world_size}: an exact "
                f"resume needs every rank's RNG stream and data shard, so it only resumes at the same world size. "
                f"Relaunch with --nproc {world} (or {world} torchrun/Ray workers), or start a new --run-dir")
        schedulers = schedulers or {}
        if written == "fsdp":
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

            model_sd, optim_sd = get_state_dict(model, list(optimizers.values()))
            state = {"model": model_sd, "optim": optim_sd}
            dcp.load(state, checkpoint_id=str(ckpt.path / "model"))
            set_state_dict(model, list(optimizers.values()), model_state_dict=state["model"],
                           optim_state_dict=state["optim"])
            train_state = torch_load(ckpt.path / "train_state.pt")
            rng = torch_load(ckpt.path / f"rng-{self.rank}.pt")
        else:
            train_state = torch_load(ckpt.path / "state.pt")
            self.unwrap(model).load_state_dict(train_state["model"])
            missing = set(optimizers) ^ set(train_state["optimizers"])
            if missing:
                raise CheckpointError(f"checkpoint {ckpt.path} holds optimizers {sorted(train_state['optimizers'])}, "
                                      f"this loop passes {sorted(optimizers)}; pass the same names as when it was saved")
            for name, opt in optimizers.items():
                opt.load_state_dict(train_state["optimizers"][name])
            rng = train_state["rng_per_rank"][self.rank]
        for name, sched in schedulers.items():
            if name not in train_state["schedulers"]:
                raise CheckpointError(f"checkpoint {ckpt.path} has no scheduler {name!r} (it has "
                                      f"{sorted(train_state['schedulers'])}); pass the names used when it was saved")
            sched.load_state_dict(train_state["schedulers"][name])
        if self.precision.scaler is not None and train_state.get("scaler"):
            self.precision.scaler.load_state_dict(train_state["scaler"])
        restore_rng(rng)
        self.extra = train_state.get("extra", {})
        return ckpt

    # -- export ------------------------------------------------------------------------------------------
    def export(self, model: torch.nn.Module, inputs: tuple[torch.Tensor, ...] | None, input_names: list[str],
               output_names: list[str], *, build=None, fmt: str | None = None) -> ExportResult | None:
        """Exports the trained model into run.export_dir (rank 0) and registers it. A collective under fsdp
        (the full weights are gathered; `build()` makes the unsharded copy that gets exported)."""
        if inputs is None or len(inputs) == 0:
            raise ExportError("export needs example inputs: pass a tuple of tensors of one real batch (>= 2 rows) in "
                              "the served forward's argument order, e.g. model.batch_inputs(next(iter(eval_data)))")
        fmt = fmt or getattr(self.config, "export_format", "torchscript")
        if self.strategy == "fsdp" and self.world_size > 1:
            if build is None:
                raise ExportError("exporting an FSDP-sharded model needs build=<function returning a fresh unsharded "
                                  "model>: the gathered full weights are loaded into it")
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if not self.run.is_primary:
                return None
            plain = build()
            plain.load_state_dict(full)
        else:
            if not self.run.is_primary:
                return None
            plain = self.unwrap(model)
        result = export_model(plain, inputs, input_names=input_names, output_names=output_names,
                              folder=self.run.export_dir, fmt=fmt, onnx=getattr(self.config, "export_onnx", True))
        self.run.register_export(result.folder)
        return result

    @contextlib.contextmanager
    def rng_isolated(self):
        """Runs a block without consuming the global CPU RNG (e.g. starting a DataLoader iterator, which draws
        its base seed from it): a resumed run then sees the same dropout masks as an uninterrupted one."""
        with torch.random.fork_rng(devices=[]):
            yield
