"""Trainer configs: one documented dataclass per trainer becomes its command line.

    @dataclass
    class MyConfig(TrainerConfig):
        hidden: int = field(default=64, metadata={"help": "width of the hidden layer"})

    cfg = parse_config(MyConfig, sys.argv[1:])   # --hidden 128, --set hidden=128, --help

Precedence (later wins): field default < `--flag value` < `--set key=value` (repeatable). Unknown flags
and keys are rejected, never skipped, with the closest known key suggested; a value of the wrong type or
outside its choices fails before any work starts, naming the key, the value and what is allowed.
Supported field types: int, float, str, bool (`--x/--no-x`, `--set x=true`), Literal[...] (choices),
Optional[...] of those (`none` clears), tuple[int, ...] / tuple[str, ...] (comma separated).
A dataclass may define `validate(self)` to check relations between fields (raise ConfigError).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ml.engine.errors import ConfigError

__all__ = ["TrainerConfig", "config_to_dict", "parse_config", "save_config", "help_text"]


def _help(text: str, **extra: Any) -> dict:
    return {"help": text, **extra}


@dataclass
class TrainerConfig:
    """What every trainer accepts. A project's config subclasses this and adds its own fields."""

    epochs: int = field(default=2, metadata=_help("passes over the training data"))
    max_steps: int | None = field(default=None, metadata=_help("stop after this many optimizer steps (none: run all epochs)"))
    batch_size: int = field(default=512, metadata=_help("samples per step on each process"))
    lr: float = field(default=2e-3, metadata=_help("learning rate (AdamW)"))
    weight_decay: float = field(default=1e-4, metadata=_help("AdamW weight decay"))
    grad_clip: float | None = field(default=1.0, metadata=_help("clip the global gradient norm to this (none: no clipping)"))
    seed: int = field(default=0, metadata=_help("seed for model init, data order and dropout"))
    precision: Literal["fp32", "bf16", "fp16"] = field(
        default="fp32", metadata=_help("fp32; bf16 autocast (CPU or GPU); fp16 autocast + grad scaler (CUDA only)"))
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata=_help("auto picks cuda when available"))
    nproc: int = field(default=1, metadata=_help("data-parallel processes (DDP: gloo on CPU, NCCL on GPU)"))
    strategy: Literal["ddp", "fsdp"] = field(default="ddp", metadata=_help(
        "with nproc > 1: ddp replicates the model on every process; fsdp (FSDP2) shards parameters, gradients and "
        "optimizer state across them, for models (e.g. embedding tables) too big for one device"))
    num_workers: int = field(default=0, metadata=_help("DataLoader worker processes per training process"))
    checkpoint_every: int = field(default=200, metadata=_help("write a checkpoint every N steps (and always at the end)"))
    keep_checkpoints: int = field(default=3, metadata=_help("how many recent checkpoints to keep"))
    resume: bool = field(default=False, metadata=_help("continue from the latest checkpoint in --run-dir"))
    run_dir: str | None = field(default=None, metadata=_help(
        "where checkpoints, logs and the export go (default: .mlenv/runs/<project>/<run name>)"))
    run_name: str | None = field(default=None, metadata=_help("MLflow run name (default: <project>-<timestamp>)"))
    experiment: str | None = field(default=None, metadata=_help("MLflow experiment (default: the project name)"))
    log_every: int = field(default=20, metadata=_help("log metrics every N steps"))
    eval_every_epoch: bool = field(default=True, metadata=_help("evaluate on the held-out split after each epoch"))
    profile: bool = field(default=False, metadata=_help("write a torch.profiler trace of a window of steps"))
    profile_steps: int = field(default=5, metadata=_help("steps recorded by --profile (after 2 warm-up steps)"))
    export_format: Literal["torchscript", "torch_export"] = field(
        default="torchscript", metadata=_help("format of the exported model"))
    export_onnx: bool = field(default=True, metadata=_help(
        "also export the model as ONNX (for ONNX Runtime serving); a model the exporter cannot take is still "
        "exported, and a bundle asking for ONNX names the reason"))
    export: bool = field(default=True, metadata=_help("export the trained model at the end"))

    def validate(self) -> None:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "nproc": self.nproc,
                    "checkpoint_every": self.checkpoint_every, "log_every": self.log_every,
                    "keep_checkpoints": self.keep_checkpoints, "profile_steps": self.profile_steps}
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"{key} must be >= 1, got {value}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1 or none, got {self.max_steps}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {self.num_workers}")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _describe(tp: Any) -> str:
    base, optional = _unwrap_optional(tp)
    if typing.get_origin(base) is Literal:
        text = "one of " + ", ".join(map(str, typing.get_args(base)))
    elif typing.get_origin(base) is tuple:
        text = f"comma-separated {typing.get_args(base)[0].__name__}s"
    elif base is bool:
        text = "true or false"
    else:
        text = f"a {base.__name__}"
    return text + (" (or none)" if optional else "")


def _convert(key: str, raw: str, tp: Any) -> Any:
    base, optional = _unwrap_optional(tp)
    if optional and raw.strip().lower() in ("none", "null", ""):
        return None
    try:
        if typing.get_origin(base) is Literal:
            choices = typing.get_args(base)
            if raw not in choices:
                raise ValueError
            return raw
        if typing.get_origin(base) is tuple:
            item = typing.get_args(base)[0]
            return tuple(item(part.strip()) for part in raw.split(",") if part.strip())
        if base is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if base is int:
            return int(raw)
        if base is float:
            return float(raw)
        if base is str:
            return raw
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is invalid: expected {_describe(tp)}") from None
    raise ConfigError(f"{key}: unsupported config field type {tp!r}")


def _fields(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls)}


def _unknown(key: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint} Known keys: {', '.join(sorted(known))}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # argparse exits; we raise so callers decide
        raise ConfigError(message + " (see --help)")


def build_parser(cls: type, prog: str | None = None, description: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description=description or (cls.__doc__ or "").strip(),
                     allow_abbrev=False)
    for name, (f, tp) in _fields(cls).items():
        help_text = f.metadata.get("help")
        if not help_text:
            raise ConfigError(f"{cls.__name__}.{name} has no help text: add metadata={{'help': ...}}")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        base, _ = _unwrap_optional(tp)
        if base is bool:
            parser.add_argument(_flag(name), dest=name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=f"{help_text} (default: {default})")
        else:
            parser.add_argument(_flag(name), dest=name, default=argparse.SUPPRESS, metavar=name.upper(),
                                help=f"{help_text}; {_describe(tp)} (default: {default})")
    parser.add_argument("--config", dest="__config_file", default=None, metavar="FILE",
                        help="a YAML or JSON file of config keys (e.g. a sweep's best.yaml); flags and --set win "
                             "over it")
    parser.add_argument("--set", dest="__overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key (repeatable; wins over flags), e.g. --set lr=1e-3")
    return parser


def _file_value(value: Any) -> str:
    """A value read from a config file, as the text a flag would carry (lists in the comma form)."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return "none" if value is None else str(value)


def read_config_file(cls: type, path: str) -> dict[str, Any]:
    """The keys of a YAML/JSON config file, converted and checked like flags: unknown keys and bad values
    name the file, the key and the fix."""
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read it ({exc.strerror or exc}); pass an existing YAML or "
                          f"JSON file") from None
    import yaml  # YAML is a superset of JSON: one reader for both

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path}: not valid YAML/JSON: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of config keys (key: value), got "
                          f"{type(data).__name__}")
    fields = _fields(cls)
    values = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in fields:
            error = _unknown(name, list(fields))
            raise ConfigError(f"--config {path}: {error}") from None
        try:
            values[name] = _convert(name, _file_value(value), fields[name][1])
        except ConfigError as exc:
            raise ConfigError(f"--config {path}: {exc}") from None
    return values


def parse_config(cls: type, argv: list[str], prog: str | None = None, description: str | None = None):
    """Parses argv into a validated instance of the config dataclass `cls`."""
    fields = _fields(cls)
    parser = build_parser(cls, prog, description)
    namespace = vars(parser.parse_args(argv))
    overrides = namespace.pop("__overrides")
    config_file = namespace.pop("__config_file")
    values: dict[str, Any] = read_config_file(cls, config_file) if config_file else {}
    for key, raw in namespace.items():
        _, tp = fields[key]
        values[key] = raw if isinstance(raw, bool) else _convert(key, raw, tp)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set lr=1e-3")
        if key not in fields:
            raise _unknown(key, list(fields))
        values[key] = _convert(key, raw, fields[key][1])
    config = cls(**values)
    validate = getattr(config, "validate", None)
    if validate:
        validate()
    return config


def config_from_dict(cls: type, data: dict[str, Any]):
    """Rebuilds a saved config (e.g. from a checkpoint or config.json); unknown keys are rejected."""
    fields = _fields(cls)
    for key in data:
        if key not in fields:
            raise _unknown(key, list(fields))
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    config = cls(**values)
    config.validate()
    return config


def config_to_dict(config: Any) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def save_config(config: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config_to_dict(config), indent=2, sort_keys=True) + "\n")
    return path


def help_text(cls: type, prog: str | None = None) -> str:
    return build_parser(cls, prog).format_help()
