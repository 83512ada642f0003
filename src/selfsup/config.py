"""Typed run configuration: YAML recipes plus ``key=value`` overrides.

A config is a tree of dataclasses. YAML is read with ``yaml.safe_load``; unknown keys and values of
the wrong type are errors that name the valid choices. ``method`` is the one open section: its
keys are the arguments of the chosen method's constructor, checked against its signature.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from selfsup.errors import SelfSupError

RECIPE_DIR = Path(__file__).parent / "configs"


@dataclass
class DataConfig:
    path: str = "digits"  # 'digits' (embedded), or a NumPy / CIFAR / IDX / image folder
    image_size: int | None = None  # resize images to this square side when loading
    subset: int | None = None  # use only the first N training images
    in_memory: bool = True  # decode image folders once into memory
    num_workers: int = 0
    max_pixels: int = 89_478_485  # image files with more pixels are refused (decompression bombs)


@dataclass
class ModelConfig:
    backbone: str = "resnet18"
    stem: str = "cifar"  # 'cifar' (3x3, no max-pool) or 'imagenet' (7x7 + max-pool)
    width: float = 1.0
    channels_last: bool | None = None  # None: on for CPU and CUDA (train/precision.py)
    zero_init_residual: bool = True  # each residual branch's last BN starts at 0 (Goyal et al. 2017)
    sync_bn: bool = True  # several processes: BatchNorm over the global batch (not for MoCo v1/v2: shuffle-BN)


@dataclass
class ViewsConfig:
    recipe: str = "simclr"  # simclr | byol | multicrop | single | colorization
    size: int | None = None  # None: follow the data (base_size scaled to the training images' side)
    base_size: int = 32  # the image side the recipe's sizes (its views, options.local_size) are written for
    options: dict[str, Any] = field(default_factory=dict)  # extra arguments of the recipe
    mean: list[float] | None = None  # None: measured on the training data
    std: list[float] | None = None


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 256  # per process and per micro-batch
    accumulate: int = 1  # micro-batches per optimizer step (gradient accumulation)
    optimizer: str = "lars"  # sgd | lars | adamw
    lr: float = 0.3  # at batch 256; scaled by lr_scaling
    lr_scaling: str = "linear"  # linear (lr x B/256) | sqrt | none
    weight_decay: float = 1e-6
    momentum: float = 0.9
    warmup_epochs: float = 10.0  # capped at the run's length
    min_lr: float = 0.0  # the cosine schedule's floor, as a fraction of the peak lr
    precision: str = "auto"  # auto (bf16 where the device runs it natively, else fp32) | fp32 | bf16
    grad_clip: float | None = None
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    deterministic: bool = False
    checkpoint_every: int = 10  # epochs
    checkpoint_every_steps: int | None = None  # also save every N optimizer steps, mid-epoch included
    keep_checkpoints: int = 2
    log_every: int = 10  # optimizer steps
    knn_every: int = 0  # epochs between online kNN checks (0: only before and after training)
    collapse_every: int = 100  # steps between collapse checks of returned "embeddings" (0: never)
    max_steps: int | None = None  # stop after this many optimizer steps (benchmarks, smoke tests)
    budget_minutes: float | None = None  # a wall-clock budget: replaces epochs (see selfsup.train.budget)
    compile: bool = False


@dataclass
class EvalConfig:
    knn_k: int = 200
    knn_temperature: float = 0.07
    batch_size: int = 512


@dataclass
class RunConfig:
    dir: str = "runs"
    name: str | None = None  # default: <method>-NNNN


@dataclass
class Config:
    method: dict[str, Any] = field(default_factory=lambda: {"name": "simclr"})
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CHOICES = {
    ("model", "backbone"): ("resnet18", "resnet34", "resnet50"),
    ("model", "stem"): ("cifar", "imagenet"),
    ("train", "optimizer"): ("sgd", "lars", "adamw"),
    ("train", "lr_scaling"): ("linear", "sqrt", "none"),
    ("train", "precision"): ("auto", "fp32", "bf16"),
}
POSITIVE = {("train", "epochs"), ("train", "batch_size"), ("train", "lr"), ("views", "size"), ("model", "width"),
            ("train", "checkpoint_every"), ("train", "log_every"), ("eval", "knn_k"), ("eval", "knn_temperature"),
            ("eval", "batch_size"), ("data", "image_size"), ("data", "subset"), ("train", "max_steps"),
            ("train", "keep_checkpoints"), ("train", "accumulate"), ("train", "checkpoint_every_steps"),
            ("data", "max_pixels"), ("views", "base_size"), ("train", "budget_minutes")}
NON_NEGATIVE = {("train", "weight_decay"), ("train", "momentum"), ("train", "warmup_epochs"), ("train", "min_lr"),
                ("train", "knn_every"), ("data", "num_workers"), ("train", "grad_clip"), ("train", "collapse_every")}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (allowing int -> float and None for Optional)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except SelfSupError as e:
                errors.append(str(e))
        raise SelfSupError(errors[0])
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-3 (no dot, no sign) as a string
            value = float(value)
        except ValueError:
            pass
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is bool and isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    if origin is list and isinstance(value, (list, tuple)):
        (inner,) = typing.get_args(tp)
        return [_coerce(v, inner, where) for v in value]
    if origin is dict and isinstance(value, dict):
        return dict(value)
    name = getattr(tp, "__name__", str(tp))
    raise SelfSupError(f"{where}: expected {name}, got {value!r} ({type(value).__name__})")


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in values if k not in valid]
    if unknown:
        raise SelfSupError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(f'{where}.{k}' for k in unknown)}"
                           f"; valid keys of {where}: {', '.join(valid)}")
    return cls(**{k: _coerce(v, hints[k], f"{where}.{k}") for k, v in values.items()})


def from_dict(d: dict[str, Any]) -> Config:
    if not isinstance(d, dict):
        raise SelfSupError(f"a config must be a mapping of sections, got {type(d).__name__}")
    sections = {f.name: f for f in dataclasses.fields(Config)}
    unknown = [k for k in d if k not in sections]
    if unknown:
        raise SelfSupError(f"unknown config section{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                           f"valid sections: {', '.join(sections)}")
    kw: dict[str, Any] = {}
    for name, value in d.items():
        if name == "method":
            if isinstance(value, str):
                value = {"name": value}
            if not isinstance(value, dict) or "name" not in value:
                raise SelfSupError("method: give a mapping with at least 'name', e.g. method: {name: simclr}")
            kw["method"] = dict(value)
        else:
            if not isinstance(value, dict):
                raise SelfSupError(f"{name}: expected a mapping of keys, got {value!r}")
            kw[name] = _build(typing.get_type_hints(Config)[name], value, name)
    cfg = Config(**kw)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    for (sec, key), choices in CHOICES.items():
        v = getattr(getattr(cfg, sec), key)
        if v not in choices:
            raise SelfSupError(f"{sec}.{key}={v!r} is not valid; choose one of: {', '.join(choices)}")
    for sec, key in POSITIVE:
        v = getattr(getattr(cfg, sec), key)
        if v is not None and v <= 0:
            raise SelfSupError(f"{sec}.{key} must be positive, got {v}")
    for sec, key in NON_NEGATIVE:
        v = getattr(getattr(cfg, sec), key)
        if v is not None and v < 0:
            raise SelfSupError(f"{sec}.{key} must be zero or positive, got {v}")
    if not cfg.train.device == "auto" and cfg.train.device.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise SelfSupError(f"train.device={cfg.train.device!r}: use auto, cpu, cuda or cuda:N")


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_recipe_path(name_or_path: str) -> Path:
    """A path to a YAML file, or the name of a packaged recipe (``simclr`` -> configs/simclr.yaml)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    packaged = RECIPE_DIR / f"{name_or_path.removesuffix('.yaml')}.yaml"
    if packaged.is_file():
        return packaged
    names = sorted(f.stem for f in RECIPE_DIR.glob("*.yaml"))
    raise SelfSupError(f"config {name_or_path!r} not found: not a file, nor a packaged recipe "
                       f"({', '.join(names)})")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML file with ``yaml.safe_load``: tags that build Python objects are refused."""
    try:
        with open(path) as fh:
            d = yaml.safe_load(fh)
    except yaml.constructor.ConstructorError as e:
        raise SelfSupError(f"{path}: refusing a YAML tag that is not plain data ({e.problem}); a config holds "
                           "only mappings, lists, strings and numbers") from None
    except yaml.YAMLError as e:
        raise SelfSupError(f"{path}: not valid YAML: {e}") from None
    return d or {}


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["train.epochs=10", "method.temperature=0.2"]`` -> nested dict; values parsed as YAML."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SelfSupError(f"override {item!r} must look like section.key=value, e.g. train.epochs=10")
        key, _, raw = item.partition("=")
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        parts = key.strip().split(".")
        if len(parts) < 2 and parts[0] != "method":
            raise SelfSupError(f"override {item!r}: name a section and key, e.g. train.{parts[0]}=...")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def load_config(config: str | None = None, overrides: list[str] | None = None) -> Config:
    d: dict[str, Any] = load_yaml(resolve_recipe_path(config)) if config else {}
    if isinstance(d.get("method"), str):
        d["method"] = {"name": d["method"]}
    ov = parse_overrides(overrides or [])
    if isinstance(ov.get("method"), str):
        ov["method"] = {"name": ov["method"]}
    return from_dict(_merge(d, ov))


def apply_overrides(cfg: Config, overrides: list[str], command: str,
                    allowed: dict[str, tuple[str, ...] | None]) -> Config:
    """``cfg`` with ``section.key=value`` overrides, for a command that reads only the ``allowed``
    keys (a section mapped to None: all of its keys). Unknown keys and bad values are refused as by
    :func:`load_config`; known keys the command does not read are refused too, naming those it does."""
    ov = parse_overrides(overrides)
    out = from_dict(_merge(cfg.to_dict(), ov))
    unused = [f"{sec}.{key}" for sec, keys in ov.items() for key in (keys if isinstance(keys, dict) else ("name",))
              if sec not in allowed or (allowed[sec] is not None and key not in allowed[sec])]
    if unused:
        takes = ", ".join(f"{sec}.*" if keys is None else ", ".join(f"{sec}.{k}" for k in keys)
                          for sec, keys in allowed.items())
        raise SelfSupError(f"{command} does not use {', '.join(unused)}; its overrides are {takes}")
    return out


def method_kwargs(cls: type, cfg: dict[str, Any]) -> dict[str, Any]:
    """Check a method's config section against its constructor and return the keyword arguments."""
    params = inspect.signature(cls.__init__).parameters
    valid = [p for p in params if p not in ("self", "backbone", "dataset_size")]
    given = {k: v for k, v in cfg.items() if k != "name"}
    unknown = [k for k in given if k not in valid]
    if unknown:
        raise SelfSupError(f"unknown key{'s' if len(unknown) > 1 else ''} "
                           f"{', '.join('method.' + k for k in unknown)} for method {cfg['name']!r}; "
                           f"valid keys: {', '.join(valid) or '(none)'}")
    return given
