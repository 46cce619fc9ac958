"""The search-space file of a sweep: what is tuned, toward which metric, with which sampler and pruner.

It exists so that a sweep is described by data a reviewer can read (ml/<project>/sweep.yaml), and so that
every mistake in that data is found before a single trial burns CPU time: parameters are checked against
the trainer's own config dataclass (the same parser `train` uses), so an unknown key, a float range on an
int field or a bound the config's `validate()` refuses fails here, naming the key and the fix.

    metric: eval/click_auc        # a metric the trainer logs (eval/<name> after each epoch, train/loss, ...)
    direction: maximize           # or minimize
    sampler: tpe                  # tpe (default) | random | cmaes
    pruner: median                # median (default) | hyperband | asha | none
    objective: last               # last (default): the trial's final value | best_epoch: its best evaluation
    seed: 0                       # sampler seed (worker k uses seed + k)
    fixed:                        # trainer config keys every trial gets (--set key=value)
      epochs: 3
    params:
      lr: {type: float, low: 1.0e-4, high: 3.0e-2, log: true}
      seq_layers: {type: int, low: 1, high: 3}
      embed_dim: {type: categorical, choices: [16, 32, 64]}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["Param", "Space", "SpaceError", "load_space", "check_against_config", "as_set_value"]

# Config keys the sweep itself sets on every trial; tuning or fixing them would break resume and tracking.
RESERVED_KEYS = ("run_dir", "run_name", "experiment", "resume", "nproc")
SAMPLERS = ("tpe", "random", "cmaes")
PRUNERS = ("median", "hyperband", "asha", "none")
# What a trial's value is: its last reported value, or its best one (the epoch the retrain then stops at).
OBJECTIVES = ("last", "best_epoch")


class SpaceError(ValueError):
    """A sweep's inputs are wrong; the message names what and how to fix it."""


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # float | int | categorical
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        if self.type == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.name, self.low, self.high, log=self.log, step=self.step or 1)
        return trial.suggest_categorical(self.name, list(self.choices))

    def probe_values(self) -> list[Any]:
        """The values whose acceptance by the trainer's config stands for the whole range."""
        if self.type == "categorical":
            return list(self.choices)
        return [self.low, self.high]


@dataclass(frozen=True)
class Space:
    path: Path
    metric: str
    direction: str
    sampler: str
    pruner: str
    seed: int
    fixed: dict[str, Any]
    params: tuple[Param, ...]
    pruner_options: dict[str, Any]
    objective: str = "last"

    def better(self, a: float, b: float) -> bool:
        """True when value `a` beats `b` in this space's direction."""
        return a > b if self.direction == "maximize" else a < b

    def digest(self) -> str:
        """Identifies what the study optimises; a study resumed with another space is refused."""
        body = {"metric": self.metric, "direction": self.direction, "fixed": self.fixed,
                "params": [dataclasses.asdict(p) for p in self.params]}
        if self.objective != "last":  # studies made before `objective` existed keep their digest
            body["objective"] = self.objective
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def make_sampler(self, worker_index: int) -> Any:
        import optuna

        seed = self.seed + worker_index
        if self.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if self.sampler == "cmaes":
            try:
                import cmaes  # noqa: F401 - optuna's CmaEsSampler imports it lazily, we want the error up front
            except ImportError:
                raise SpaceError(f"{self.path}: sampler: cmaes needs the `cmaes` package, which is not in the "
                                 "locked environment; use sampler: tpe or random, or add cmaes to "
                                 "third_party/pip/requirements.in and relock") from None
            return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=int(self.pruner_options.get("tpe_startup", 4)))

    def make_pruner(self) -> Any:
        import optuna

        opts = self.pruner_options
        if self.pruner == "none":
            return optuna.pruners.NopPruner()
        if self.pruner == "hyperband":
            return optuna.pruners.HyperbandPruner(min_resource=opts.get("min_resource", 1),
                                                  max_resource=opts.get("max_resource", "auto"),
                                                  reduction_factor=opts.get("reduction_factor", 3))
        if self.pruner == "asha":
            return optuna.pruners.SuccessiveHalvingPruner(min_resource=opts.get("min_resource", "auto"),
                                                          reduction_factor=opts.get("reduction_factor", 3))
        return optuna.pruners.MedianPruner(n_startup_trials=int(opts.get("startup_trials", 2)),
                                           n_warmup_steps=int(opts.get("warmup_steps", 0)))


def as_set_value(value: Any) -> str:
    """How a value is written after `--set key=` (lists become the config parser's comma form)."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    return str(value)


def _number(where: str, value: Any, integer: bool) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpaceError(f"{where} must be a number, got {value!r}")
    if integer and not float(value).is_integer():
        raise SpaceError(f"{where} must be an integer for an int parameter, got {value!r}")
    return int(value) if integer else float(value)


def _param(path: Path, name: str, spec: Any) -> Param:
    where = f"{path}: params.{name}"
    if not isinstance(spec, dict) or "type" not in spec:
        raise SpaceError(f"{where}: expected a mapping with a type, e.g. {{type: float, low: 1e-4, high: 1e-2, "
                         f"log: true}} or {{type: categorical, choices: [16, 32]}}")
    kind = spec["type"]
    allowed = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
               "categorical": {"type", "choices"}}
    if kind not in allowed:
        raise SpaceError(f"{where}.type is {kind!r}; use float, int or categorical")
    extra = set(spec) - allowed[kind]
    if extra:
        raise SpaceError(f"{where}: unknown field(s) {', '.join(sorted(extra))} for a {kind} parameter "
                         f"(allowed: {', '.join(sorted(allowed[kind]))})")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{where}.choices must be a non-empty list")
        if len({json.dumps(c, sort_keys=True) for c in choices}) != len(choices):
            raise SpaceError(f"{where}.choices has duplicates: {choices}")
        return Param(name, kind, choices=tuple(tuple(c) if isinstance(c, list) else c for c in choices))
    for key in ("low", "high"):
        if key not in spec:
            raise SpaceError(f"{where}: a {kind} parameter needs low and high")
    integer = kind == "int"
    low, high = _number(f"{where}.low", spec["low"], integer), _number(f"{where}.high", spec["high"], integer)
    if not low < high:
        raise SpaceError(f"{where}: low ({low}) must be < high ({high})")
    log = bool(spec.get("log", False))
    if log and low <= 0:
        raise SpaceError(f"{where}: a log range needs low > 0, got {low}")
    step = spec.get("step")
    if step is not None:
        step = _number(f"{where}.step", step, integer)
        if log:
            raise SpaceError(f"{where}: step and log cannot be combined (Optuna samples one or the other)")
    return Param(name, kind, low=low, high=high, log=log, step=step)


def load_space(path: Path) -> Space:
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"space file {path} does not exist; pass --space <file.yaml> (see docs/sweeps.md)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpaceError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise SpaceError(f"{path}: expected a mapping with metric, direction and params")
    known = {"metric", "direction", "sampler", "pruner", "seed", "fixed", "params", "pruner_options", "study",
             "objective"}
    unknown = set(raw) - known
    if unknown:
        raise SpaceError(f"{path}: unknown top-level key(s) {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(sorted(known))}")
    metric = raw.get("metric")
    if not isinstance(metric, str) or "/" not in metric:
        raise SpaceError(f"{path}: metric must name a tracked metric such as eval/click_auc, got {metric!r}")
    direction = raw.get("direction", "maximize")
    if direction not in ("maximize", "minimize"):
        raise SpaceError(f"{path}: direction must be maximize or minimize, got {direction!r}")
    sampler = raw.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise SpaceError(f"{path}: sampler {sampler!r} is not one of {', '.join(SAMPLERS)}")
    pruner = raw.get("pruner", "median")
    if pruner not in PRUNERS:
        raise SpaceError(f"{path}: pruner {pruner!r} is not one of {', '.join(PRUNERS)}")
    objective = raw.get("objective", "last")
    if objective not in OBJECTIVES:
        raise SpaceError(f"{path}: objective {objective!r} is not one of {', '.join(OBJECTIVES)} (last: a trial's "
                         "final value; best_epoch: its best evaluation, retrained with that many epochs)")
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise SpaceError(f"{path}: seed must be an integer, got {seed!r}")
    fixed = raw.get("fixed") or {}
    params_raw = raw.get("params")
    if not isinstance(fixed, dict):
        raise SpaceError(f"{path}: fixed must be a mapping of config key to value")
    if not isinstance(params_raw, dict) or not params_raw:
        raise SpaceError(f"{path}: params must map at least one trainer config key to a range")
    for key in list(fixed) + list(params_raw):
        if key in RESERVED_KEYS:
            raise SpaceError(f"{path}: {key} is set by the sweep for every trial; remove it from the space file")
    both = set(fixed) & set(params_raw)
    if both:
        raise SpaceError(f"{path}: {', '.join(sorted(both))} is both fixed and tuned; keep one")
    params = tuple(_param(path, str(name), spec) for name, spec in params_raw.items())
    return Space(path=path, metric=metric, direction=direction, sampler=sampler, pruner=pruner, seed=seed,
                 fixed={str(k): v for k, v in fixed.items()}, params=params,
                 pruner_options=dict(raw.get("pruner_options") or {}), objective=objective)


def _field_types(config_cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(config_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_cls)}


def check_against_config(space: Space, config_cls: type, base_sets: list[str]) -> None:
    """Every tuned key exists in the trainer's config, has a fitting type, and every bound is accepted.

    `base_sets` are the `key=value` overrides every trial gets (fixed: + --set), so relations the config's
    validate() checks (e.g. embed_dim divisible by seq_heads) are judged with them in place.
    """
    from ml.engine.config import parse_config
    from ml.engine.errors import ConfigError

    types = _field_types(config_cls)
    argv = [x for item in base_sets for x in ("--set", item)]
    try:
        parse_config(config_cls, argv)
    except ConfigError as exc:
        raise SpaceError(f"the fixed settings (space file fixed: and --set) are refused by "
                         f"{config_cls.__name__}: {exc}") from None
    if space.objective == "best_epoch":
        if "epochs" not in types or not space.metric.startswith("eval/"):
            raise SpaceError(f"{space.path}: objective: best_epoch needs an eval/ metric (one value per epoch) and "
                             f"an `epochs` key in {config_cls.__name__} (the best config retrains that many "
                             "epochs); use objective: last")
        if any(s.replace(" ", "") == "eval_every_epoch=false" for s in base_sets):
            raise SpaceError(f"{space.path}: objective: best_epoch needs an evaluation after each epoch; remove "
                             "eval_every_epoch=false or use objective: last")
    for p in space.params:
        if p.name not in types:
            import difflib

            close = difflib.get_close_matches(p.name, list(types), n=3)
            raise SpaceError(f"{space.path}: params.{p.name} is not a key of {config_cls.__name__}"
                             + (f"; did you mean {', '.join(close)}?" if close else "")
                             + " (list them with `train -- --help`)")
        tp = types[p.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
        base = args[0]
        if p.type == "float" and base is not float:
            raise SpaceError(f"{space.path}: params.{p.name} is a float range but {config_cls.__name__}.{p.name} "
                             f"is {getattr(base, '__name__', base)}; use type: "
                             f"{'int' if base is int else 'categorical'}")
        if p.type == "int" and base is not int:
            raise SpaceError(f"{space.path}: params.{p.name} is an int range but {config_cls.__name__}.{p.name} "
                             f"is {getattr(base, '__name__', base)}; use type: "
                             f"{'float' if base is float else 'categorical'}")
        for value in p.probe_values():
            try:
                parse_config(config_cls, argv + ["--set", f"{p.name}={as_set_value(value)}"])
            except ConfigError as exc:
                raise SpaceError(f"{space.path}: params.{p.name}: the value {value!r} is outside what "
                                 f"{config_cls.__name__} accepts ({exc}); narrow the range") from None
