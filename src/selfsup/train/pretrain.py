"""From a config to a trained run folder: the pieces the CLI and the Python API share."""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from selfsup import dist
from selfsup.config import Config, from_dict, load_yaml, method_kwargs
from selfsup.data.datasets import ArrayDataset, ImageFolder, open_dataset
from selfsup.data.loader import BatchLoader
from selfsup.data.views import ViewRecipe, build_recipe, scale_view_sizes
from selfsup.errors import SelfSupError
from selfsup.eval.features import eval_batches, extract_features
from selfsup.eval.knn import knn_eval
from selfsup.methods import METHODS, Method
from selfsup.models import build_backbone
from selfsup.models.sync_bn import convert_to_global_bn
from selfsup.train import checkpoint as ckpt
from selfsup.train import launch
from selfsup.train.precision import resolve_fast_defaults
from selfsup.train.trainer import FitResult, fit


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    d = torch.device(name)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise SelfSupError(f"train.device={name} but no CUDA device is available; use train.device=cpu or auto")
    return d


def load_train_data(cfg: Config) -> ArrayDataset | ImageFolder:
    ds = open_dataset(cfg.data.path, "train", cfg.data.image_size, in_memory=cfg.data.in_memory,
                      max_pixels=cfg.data.max_pixels)
    if cfg.data.subset is not None and isinstance(ds, ArrayDataset) and cfg.data.subset < len(ds):
        ds = ds.subset(torch.arange(cfg.data.subset), f"{ds.name}[:{cfg.data.subset}]")
    return ds


def load_test_data(cfg: Config) -> ArrayDataset | None:
    try:
        ds = open_dataset(cfg.data.path, "test", cfg.data.image_size, max_pixels=cfg.data.max_pixels)
    except SelfSupError:
        return None
    return ds if isinstance(ds, ArrayDataset) and ds.has_labels else None


def resolve_normalization(cfg: Config, ds: ArrayDataset | ImageFolder) -> None:
    """Fill views.mean/std from the training data when not given, so the run folder records them."""
    if cfg.views.mean is not None and cfg.views.std is not None:
        return
    if isinstance(ds, ArrayDataset):
        mean, std = ds.channel_stats()
    else:  # ImageNet statistics for streamed folders
        mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    cfg.views.mean = cfg.views.mean or mean
    cfg.views.std = cfg.views.std or std


def _data_side(cfg: Config, ds: ArrayDataset | ImageFolder) -> tuple[int, str] | None:
    """The side the views scale to and how to name it; None where the data has no size of its
    own: image folders are decoded to data.image_size (32 when unset), a size of our choosing."""
    from_folder = isinstance(ds, ImageFolder) or ds.report is not None
    if from_folder:
        if cfg.data.image_size is None:
            return None
        return cfg.data.image_size, f"data.image_size={cfg.data.image_size}"
    h, w = ds.image_size
    return min(h, w), f"the data's {h}x{w} images"


def resolve_view_size(cfg: Config, ds: ArrayDataset | ImageFolder) -> str | None:
    """Fill views.size when not set, so the run folder records it: the recipe's sizes, written for
    views.base_size, scaled to the training images' side. Returns a line saying so when that
    changed a size, else None. A views.size already set (by the user, or by a saved run) stays."""
    v = cfg.views
    if v.size is not None:
        return None
    side = _data_side(cfg, ds)
    if side is None or side[0] == v.base_size:
        v.size = v.base_size
        return None
    recipe_options = scale_view_sizes(v.recipe, v.options, v.base_size, v.base_size)[1]
    v.size, v.options = scale_view_sizes(v.recipe, v.options, v.base_size, side[0])
    sizes, recipe_sizes = f"{v.size} px", f"{v.base_size} px"
    if "local_size" in v.options:
        sizes += f", local crops {v.options['local_size']} px"
        recipe_sizes += f" and {recipe_options['local_size']} px"
    return f"views: {sizes} (recipe {recipe_sizes} scaled to {side[1]}); set views.size to choose"


def build_method(cfg: Config, dataset_size: int = 0) -> Method:
    name = cfg.method.get("name")
    if name not in METHODS:
        raise SelfSupError(f"unknown method {name!r}; choose one of: {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    backbone = build_backbone(cfg.model.backbone, cfg.model.stem, cfg.model.width, cfg.model.channels_last,
                              cfg.model.zero_init_residual)
    kw = method_kwargs(cls, cfg.method)
    if "dataset_size" in inspect.signature(cls.__init__).parameters:
        kw["dataset_size"] = dataset_size  # methods with one slot per image (memory banks, cluster labels)
    try:
        return cls(backbone, **kw)
    except (TypeError, ValueError) as e:
        raise SelfSupError(f"method {name!r}: {e}") from None


def distributed_batchnorm(cfg: Config, method: Method) -> Method:
    """With several processes and ``model.sync_bn``, BatchNorm over the global batch (SimCLR's
    global BN: 1 and N processes then train alike), unless the method keeps per-process
    statistics (``Method.global_bn = False``: MoCo v1/v2, whose shuffle-BN a global BN defeats)."""
    if dist.is_distributed() and cfg.model.sync_bn and method.global_bn:
        return convert_to_global_bn(method)
    return method


def build_views(cfg: Config, train_set: ArrayDataset | ImageFolder | None = None,
                device: torch.device | None = None) -> ViewRecipe:
    # Background removal (views.options.background, ReLICv2) needs the training images for its
    # foreground masks, estimated on ``device`` and cached per data set under the runs folder.
    if cfg.views.size is None:
        raise SelfSupError("views.size is not set; call resolve_view_size(cfg, train_set) first, or set views.size")
    if "background" in cfg.views.options and train_set is None:
        train_set = load_train_data(cfg)
    return build_recipe(cfg.views.recipe, cfg.views.mean, cfg.views.std, size=cfg.views.size, dataset=train_set,
                        mask_cache=Path(cfg.run.dir) / "foreground_masks", mask_device=device, **cfg.views.options)


RUN_FILES = ("config.yaml", "metrics.jsonl", "data_report.json", "checkpoints")


def new_run_dir(cfg: Config, force: bool = False) -> Path:
    """A new run folder. An existing named one is refused, or with ``force`` emptied of the old
    run's files, so that no stale checkpoint of it can ever be resumed."""
    root = Path(cfg.run.dir)
    if cfg.run.name:
        d = root / cfg.run.name
        if d.exists() and any(d.iterdir()):
            if not force:
                raise SelfSupError(f"run folder {d} exists; resume it with --resume {d}, "
                                   "overwrite it with --force, or pick another run.name")
            if dist.is_main():
                for name in RUN_FILES:
                    old = d / name
                    shutil.rmtree(old) if old.is_dir() else old.unlink(missing_ok=True)
        return d
    prefix = cfg.method["name"]
    taken = [int(m.group(1)) for p in root.glob(f"{prefix}-*") if (m := re.fullmatch(rf"{prefix}-(\d+)", p.name))]
    return root / f"{prefix}-{max(taken, default=0) + 1:04d}"


def knn_monitor(cfg: Config, train_set: ArrayDataset, test_set: ArrayDataset, device: torch.device):
    """kNN top-1/top-5 of a backbone: training images as the bank, test images as queries."""
    def monitor(backbone: torch.nn.Module) -> dict[str, float]:
        with torch.autocast(device.type, torch.bfloat16, enabled=False):
            f_tr, y_tr = extract_features(backbone, train_set, cfg.views.mean, cfg.views.std, cfg.views.size,
                                          cfg.eval.batch_size, device)
            f_te, y_te = extract_features(backbone, test_set, cfg.views.mean, cfg.views.std, cfg.views.size,
                                          cfg.eval.batch_size, device)
        return knn_eval(f_tr, y_tr, f_te, y_te, cfg.eval.knn_k, cfg.eval.knn_temperature)
    return monitor


@dataclass
class PretrainResult:
    run_dir: Path
    method: Method
    fit: FitResult
    rank: int = 0  # this process's rank (0 on a single process)


def pretrain(cfg: Config | None, resume_dir: str | Path | None = None, force: bool = False, progress: bool = True,
             profile: bool = False) -> PretrainResult:
    """Train the configured method; write config.yaml, metrics.jsonl and checkpoints into the run."""
    started_at = time.perf_counter()  # train.budget_minutes counts loading the data and the model too
    launch.init_from_env()
    resume_state: dict[str, Any] | None = None
    if resume_dir is not None:
        run_dir = Path(resume_dir)
        if not (run_dir / "config.yaml").exists():
            raise SelfSupError(f"{run_dir} is not a run folder (no config.yaml); nothing to resume")
        cfg = from_dict(load_yaml(run_dir / "config.yaml"))
        resume_state, path = ckpt.load_latest(run_dir, required=ckpt.RESUME_KEYS)
        if dist.is_main() and progress:
            print(f"resuming {run_dir} from {path.name} (epoch {resume_state['epoch']}, step {resume_state['step']})")
    else:
        # Rank 0 names (and, with --force, empties) the folder; the others take its answer.
        shared = [new_run_dir(cfg, force) if dist.is_main() else None]
        if dist.is_distributed():
            torch.distributed.broadcast_object_list(shared, src=0)
        run_dir = Path(shared[0])
    device = pick_device(cfg.train.device)
    fast = resolve_fast_defaults(cfg, device)  # before config.yaml is written: it records the choice
    if fast and dist.is_main():
        print(fast, flush=True)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    ckpt.seed_everything(cfg.train.seed)
    train_set = load_train_data(cfg)
    resolve_normalization(cfg, train_set)
    note = resolve_view_size(cfg, train_set)
    if note and dist.is_main():
        print(note, flush=True)
    recipe = build_views(cfg, train_set, device)
    if isinstance(train_set, ArrayDataset):
        recipe.check_image_size(train_set.image_size)
    method = distributed_batchnorm(cfg, build_method(cfg, len(train_set)))
    method = method.to(device)
    if cfg.model.channels_last:
        method = method.to(memory_format=torch.channels_last)
    if dist.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume_state is None:
            (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    loader = BatchLoader(train_set, cfg.train.batch_size, shuffle=True, drop_last=True, seed=cfg.train.seed,
                         rank=dist.rank(), world_size=dist.world_size(), num_workers=cfg.data.num_workers,
                         device=device, pin_memory=True)
    monitor = None
    test_set = load_test_data(cfg)
    if test_set is not None and isinstance(train_set, ArrayDataset) and train_set.has_labels:
        monitor = knn_monitor(cfg, train_set, test_set, device)
    batches = None
    if isinstance(train_set, ArrayDataset):
        def batches():
            return eval_batches(train_set, cfg.views.mean, cfg.views.std, cfg.views.size, cfg.eval.batch_size, device)
    try:
        result = fit(method, loader, recipe, cfg.train, run_dir, monitor=monitor, resume=resume_state,
                     eval_batches=batches, progress=progress, config_dict=cfg.to_dict(), profile=profile,
                     started_at=started_at)
    finally:
        write_data_report(run_dir, train_set, loader)
    return PretrainResult(run_dir, method, result, dist.rank())


def write_data_report(run_dir: Path, train_set: ArrayDataset | ImageFolder, loader: BatchLoader) -> None:
    """``data_report.json``: what reading an image folder found (bad files and why, ignored files,
    empty classes, looping links). Files that failed in loader workers are diagnosed here."""
    report = train_set.report if isinstance(train_set, (ArrayDataset, ImageFolder)) else None
    if report is None or not dist.is_main():
        return
    if isinstance(train_set, ImageFolder):
        train_set.note_failures(loader.failed)
    (run_dir / "data_report.json").write_text(json.dumps(report.to_dict(), indent=2))
    if report.bad:
        warnings.warn(f"{len(report.bad)} unreadable image files were left out or replaced by neighbours; "
                      f"see {run_dir / 'data_report.json'}", stacklevel=2)


def load_run(run_dir: str | Path, map_location: str | torch.device = "cpu") -> tuple[Config, Method, dict]:
    """The config and the trained method of a run folder (its newest loadable checkpoint)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise SelfSupError(f"{run_dir} is not a run folder (no config.yaml); pass the folder `selfsup pretrain` made")
    cfg = from_dict(load_yaml(run_dir / "config.yaml"))
    state, _ = ckpt.load_latest(run_dir, map_location)
    method = build_method(cfg, state.get("dataset_size", 0))
    method.load_state_dict(state["method"])
    return cfg, method, state
