"""One GPU benchmark: step throughput, the input pipeline against a typical peer's, and a budgeted run.

Everything runs in one process, in this order, so that every ratio of one invocation is measured
on the same machine at the same time:

1. Data. The first ``--train-images`` training and ``--test-images`` test images of CIFAR-10
   (``--data``, default ``../shared/data/cifar10`` next to the repository) are written to one
   ``.npz`` file under ``--out`` (10,000 + 2,000 images: 37 MB; the file is kept under 60 MB).
   Without that folder, a data file of an earlier run in ``--out`` is reused; without either (or
   with ``--synthetic``) the images are random uint8 with random labels, and the kNN figure then
   means nothing. The library reads the arrays from a scratch folder of ``train_x.npy`` etc.
2. Step throughput: images/s of selfsup's training step (``selfsup.train.fit``, as
   ``benchmarks/throughput.py`` measures it: warm-up steps, then timed steps with the device
   synchronized around each phase) for the SimCLR, BYOL and SwAV recipes, ResNet-18 (CIFAR stem,
   width 1.0) at 32 px and batch 512, at fp32 and bf16, NCHW and channels_last, eager and under
   ``torch.compile``. Compiling costs a minute or more per configuration, so by default
   (``--compile fastest``) each method is compiled at its fastest eager setting only, and only
   while the time budget allows; every configuration not measured is a row with its reason.
3. Input pipeline, SimCLR: the same step fed by a ``torch.utils.data.DataLoader`` whose worker
   processes augment each image on the host with PIL (as torchvision-based libraries do:
   RandomResizedCrop(32, scale 0.08-1), horizontal flip, colour jitter 0.4/0.4/0.4/0.1 with
   p=0.8, grayscale p=0.2, to tensor, normalize; written here with PIL and NumPy), against
   selfsup's own pipeline (uint8 batches cut on the device, views built there in batch).
4. A budgeted SimCLR run on the data file (``train.budget_minutes``: as many epochs as fit the
   time left of ``--minutes``), scored by the online weighted kNN monitor (k=200, T=0.1; the
   training images as the bank, the test images as queries), before and after training.

Usage:

    benchmarks/gpu.sh                          # on a GPU machine (about 8 minutes on one H100)
    benchmarks/gpu.sh --minutes 6 --compile none
    benchmarks/gpu.sh --device cpu --smoke     # CI: tiny synthetic data, a few seconds on a CPU
    benchmarks/gpu.sh --prepare-data           # only write the data file into --out, then exit

Output: ``gpu_bench.json`` in ``--out`` (default ``benchmarks/results/gpu/``) with every figure,
the device name, torch version, date and settings (rewritten after every row, so a run cut short
keeps what it measured), the run folder of the budgeted run under ``runs/`` (its checkpoints
deleted), and one Markdown table, printed and saved as ``gpu_bench.md``, shaped like this (the
figures here are made up; ``relative`` is to the method's fp32 NCHW eager row, to selfsup's own
pipeline for the pipeline rows):

    | benchmark | configuration | images/s | relative | data / aug / compute | note |
    |---|---|---|---|---|---|
    | step | simclr fp32 NCHW eager | 5000.0 | 1.00 | 1% / 4% / 95% | |
    | step | simclr fp32 NCHW compiled | - | - | - | skipped: ... |
    ...
    | pipeline | simclr peer: DataLoader, 15 workers, PIL per image | ... | 0.40 | 70% / 0% / 30% | |
    | train | simclr budgeted, 10000 images | ... | | | 300 epochs in 3.0 min; kNN top-1 80.0% ... |

The exit status is 1 when any row failed with an error (the JSON and the table are written
first), 0 otherwise. ``--smoke`` uses 256 + 64 synthetic images, width 0.125, batch 16, 2 timed
steps, one peer worker, one torch thread and a 0.1-minute budgeted run; on a CPU its compiled
rows are skipped (compiling takes about 70 s there) and say so.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import random
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps
from throughput import cpu_name, measure
from torch.utils.data import DataLoader, Dataset, RandomSampler

from selfsup.config import load_config
from selfsup.train.precision import resolve_fast_defaults
from selfsup.train.pretrain import (
    build_method,
    load_train_data,
    pick_device,
    pretrain,
    resolve_normalization,
    resolve_view_size,
)
from selfsup.train.trainer import fit

STARTED = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "gpu"
METHODS = ("simclr", "byol", "swav")
PRECISIONS = ("fp32", "bf16")
LAYOUTS = (False, True)  # model.channels_last
MAX_DATA_BYTES = 60_000_000
SIDE = 32
FIRST_COMPILE_ESTIMATE_S = 90.0  # what one compiled configuration is assumed to cost before one was timed


# --------------------------------------------------------------------------------------------- data


def data_file_name(source: str, n_train: int, n_test: int) -> str:
    return f"{source}-train{n_train}-test{n_test}.npz"


def make_data(a: argparse.Namespace) -> tuple[Path, dict]:
    """Write (or find) the benchmark's one data file; return its path and what it holds."""
    folder = a.out / "data"
    folder.mkdir(parents=True, exist_ok=True)
    real = folder / data_file_name("cifar10", a.train_images, a.test_images)
    note = ""
    if a.synthetic_reason is None and a.data.is_dir():
        arrays = {}
        for split, n in (("train", a.train_images), ("test", a.test_images)):
            missing = [f.name for f in (a.data / f"{split}_x.npy", a.data / f"{split}_y.npy") if not f.exists()]
            if missing:
                raise SystemExit(f"{a.data}: no {' or '.join(missing)}; a CIFAR-10 NumPy folder has "
                                 "train_x.npy, train_y.npy, test_x.npy and test_y.npy")
            x = np.load(a.data / f"{split}_x.npy", mmap_mode="r")
            y = np.load(a.data / f"{split}_y.npy", mmap_mode="r")
            if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (SIDE, SIDE, 3):
                raise SystemExit(f"{a.data}/{split}_x.npy: expected uint8 (N, {SIDE}, {SIDE}, 3), "
                                 f"got {x.dtype} {x.shape}")
            if len(x) < n or len(y) < n:
                raise SystemExit(f"{a.data}: {split} has {min(len(x), len(y))} images, fewer than the {n} asked for")
            arrays[f"{split}_x"], arrays[f"{split}_y"] = np.ascontiguousarray(x[:n]), np.asarray(y[:n], np.uint8)
        np.savez(real, **arrays)
        path, source = real, f"{a.data} (first {a.train_images} train, {a.test_images} test)"
    elif a.synthetic_reason is None and real.exists():
        path, source = real, f"{real} (made by an earlier run; {a.data} not found)"
    else:
        why = a.synthetic_reason or f"{a.data} not found and no {real.name} in {folder}"
        rng = np.random.default_rng(0)
        path = folder / data_file_name("synthetic", a.train_images, a.test_images)
        np.savez(path, train_x=rng.integers(0, 256, (a.train_images, SIDE, SIDE, 3), dtype=np.uint8),
                 train_y=rng.integers(0, 10, a.train_images, dtype=np.uint8),
                 test_x=rng.integers(0, 256, (a.test_images, SIDE, SIDE, 3), dtype=np.uint8),
                 test_y=rng.integers(0, 10, a.test_images, dtype=np.uint8))
        source, note = "synthetic uint8 images, random labels", f"synthetic data ({why}): kNN is chance level"
    size = path.stat().st_size
    if size > MAX_DATA_BYTES:
        raise SystemExit(f"{path} is {size / 1e6:.1f} MB, over the {MAX_DATA_BYTES / 1e6:.0f} MB limit; "
                         "lower --train-images / --test-images")
    with np.load(path) as z:
        counts = {"train_images": int(len(z["train_x"])), "test_images": int(len(z["test_x"]))}
    return path, {"file": str(path), "megabytes": round(size / 1e6, 1), "source": source, "note": note, **counts}


def unpack(npz: Path, folder: Path) -> None:
    """The arrays of the data file as the NumPy folder (train_x.npy, ...) that ``data.path`` reads."""
    with np.load(npz) as z:
        for k in ("train_x", "train_y", "test_x", "test_y"):
            np.save(folder / f"{k}.npy", z[k])


# --------------------------------------------------------------- a typical peer's input pipeline


class PeerAugment:
    """SimCLR's CIFAR views as a torchvision pipeline makes them, one PIL image at a time.

    RandomResizedCrop(size, scale, ratio 3/4-4/3) with torchvision's box sampling (10 tries, then
    a centred box), bilinear resize, horizontal flip p=0.5, RandomApply(ColorJitter(b, c, s, h)
    in a random order per image, p=0.8), RandomGrayscale(p=0.2), ToTensor, Normalize.
    Random numbers come from the ``random`` module, which DataLoader seeds in every worker.
    """

    def __init__(self, size: int, mean, std, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                 jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, gray_p=0.2, flip_p=0.5):
        self.size, self.scale, self.ratio = size, scale, ratio
        self.jitter, self.jitter_p, self.gray_p, self.flip_p = jitter, jitter_p, gray_p, flip_p
        self.mean = np.asarray(mean, np.float32).reshape(1, 1, 3)
        self.inv_std = 1.0 / np.asarray(std, np.float32).reshape(1, 1, 3)

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        area = width * height
        log_r = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * random.uniform(*self.scale)
            aspect = math.exp(random.uniform(*log_r))
            w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                top, left = random.randint(0, height - h), random.randint(0, width - w)
                return left, top, left + w, top + h
        w, h = width, height
        if width / height < self.ratio[0]:
            h = round(w / self.ratio[0])
        elif width / height > self.ratio[1]:
            w = round(h * self.ratio[1])
        left, top = (width - w) // 2, (height - h) // 2
        return left, top, left + w, top + h

    @staticmethod
    def adjust_hue(img: Image.Image, shift: float) -> Image.Image:
        h, s, v = img.convert("HSV").split()
        hue = np.asarray(h, dtype=np.uint8) + np.uint8(int(round(shift * 255)) % 256)  # wraps around, as torchvision
        return Image.merge("HSV", (Image.fromarray(hue), s, v)).convert("RGB")

    def color_jitter(self, img: Image.Image) -> Image.Image:
        b, c, s, hue = self.jitter
        ops = [lambda im: ImageEnhance.Brightness(im).enhance(random.uniform(max(0.0, 1 - b), 1 + b)),
               lambda im: ImageEnhance.Contrast(im).enhance(random.uniform(max(0.0, 1 - c), 1 + c)),
               lambda im: ImageEnhance.Color(im).enhance(random.uniform(max(0.0, 1 - s), 1 + s)),
               lambda im: self.adjust_hue(im, random.uniform(-hue, hue))]
        random.shuffle(ops)
        for op in ops:
            img = op(img)
        return img

    def __call__(self, img: Image.Image) -> np.ndarray:
        img = img.crop(self.crop_box(*img.size)).resize((self.size, self.size), Image.Resampling.BILINEAR)
        if random.random() < self.flip_p:
            img = ImageOps.mirror(img)
        if random.random() < self.jitter_p:
            img = self.color_jitter(img)
        if random.random() < self.gray_p:
            img = ImageOps.grayscale(img).convert("RGB")
        x = (np.asarray(img, dtype=np.float32) * (1 / 255) - self.mean) * self.inv_std
        return x.transpose(2, 0, 1)


class PeerDataset(Dataset):
    """Items ``(views float (V, 3, S, S), label, index)``: uint8 HWC images augmented per item."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, augment: PeerAugment, views: int = 2):
        self.images, self.labels, self.augment, self.views = images, labels, augment, views

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.images[i])
        return torch.from_numpy(np.stack([self.augment(img) for _ in range(self.views)])), int(self.labels[i]), i


class PeerLoader:
    """The parts of ``BatchLoader`` that ``fit`` uses, fed by one long ``DataLoader`` iteration.

    The workers keep running across ``fit`` calls (warm-up, then timed steps) and across epoch
    ends, so the timed steps see the pipeline in its steady state. A batch is the views stacked
    as ``(B, V, 3, S, S)``; :func:`peer_views` unstacks them.
    """

    rank, world_size = 0, 1

    def __init__(self, dataset: PeerDataset, batch_size: int, workers: int, device: torch.device, batches: int):
        self.dataset, self.batch_size, self.device = dataset, batch_size, device
        self.epoch, self.failed = 0, set()
        sampler = RandomSampler(dataset, num_samples=batch_size * batches)
        self._loader = DataLoader(dataset, batch_size, sampler=sampler, drop_last=True, num_workers=workers,
                                  pin_memory=device.type == "cuda", prefetch_factor=2 if workers else None)
        self._it = iter(self._loader)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset) // self.batch_size

    def iter_from(self, start_batch: int = 0):
        for _ in range(start_batch, len(self)):
            views, labels, index = next(self._it)
            yield (views.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True),
                   index.to(self.device, non_blocking=True))

    def close(self) -> None:
        self._it = None  # the iterator's finalizer stops the worker processes
        gc.collect()


def peer_views(images: torch.Tensor, g: torch.Generator, index: torch.Tensor | None = None) -> list[torch.Tensor]:
    """The recipe ``fit`` calls: the views are made already; unstack them."""
    return [images[:, i].contiguous() for i in range(images.shape[1])]


def shm_workers(workers: int, batch_bytes: int, prefetch: int = 2) -> tuple[int, str]:
    """Workers whose prefetched batches fit half of /dev/shm (DataLoader passes batches through it)."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return workers, ""
    free = st.f_bavail * st.f_frsize
    fit_n = max(1, int(0.5 * free // max(1, prefetch * batch_bytes)))
    if workers > fit_n:
        return fit_n, f"{workers} workers lowered to {fit_n}: /dev/shm has {free / 2**20:.0f} MiB free"
    return workers, ""


def measure_peer(overrides: list[str], steps: int, warmup: int, workers: int) -> dict:
    """``throughput.measure`` for SimCLR with the peer pipeline in place of selfsup's own."""
    cfg = load_config("simclr", overrides)
    device = pick_device(cfg.train.device)
    resolve_fast_defaults(cfg, device)
    ds = load_train_data(cfg)
    resolve_normalization(cfg, ds)
    resolve_view_size(cfg, ds)
    size, batch = cfg.views.size, cfg.train.batch_size
    strength = cfg.views.options.get("strength", 0.5)
    jitter = (0.8 * strength, 0.8 * strength, 0.8 * strength, 0.2 * strength)
    augment = PeerAugment(size, cfg.views.mean, cfg.views.std, jitter=jitter)
    images = np.ascontiguousarray(ds.images.permute(0, 2, 3, 1).numpy())
    dataset = PeerDataset(images, ds.labels.numpy(), augment)
    workers, note = shm_workers(workers, batch * 2 * 3 * size * size * 4)
    method = build_method(cfg, len(ds)).to(device)
    if cfg.model.channels_last:
        method = method.to(memory_format=torch.channels_last)
    # fit reads one batch past its last step; an epoch end costs nothing here: the stream goes on.
    loader = PeerLoader(dataset, batch, workers, device, batches=warmup + steps + 4)
    cfg.train.epochs = max(1, -(-(steps + warmup) // len(loader)))
    cfg.train.warmup_epochs = 0
    try:
        cfg.train.max_steps = warmup
        t = time.perf_counter()
        fit(method, loader, peer_views, cfg.train, None, progress=False, profile=True)
        warmup_wall = time.perf_counter() - t
        cfg.train.max_steps = steps
        t = time.perf_counter()
        res = fit(method, loader, peer_views, cfg.train, None, progress=False, profile=True)
        wall = time.perf_counter() - t
    finally:
        loader.close()
    total = sum(res.timing.values())
    return {"precision": cfg.train.precision, "channels_last": cfg.model.channels_last, "workers": workers,
            "steps": res.steps, "warmup_steps": warmup, "warmup_wall_s": round(warmup_wall, 2),
            "images_per_s": round(res.steps * batch / total, 1), "wall_s": round(wall, 2),
            "split": {k: round(v / total, 4) for k, v in res.timing.items()}, "note": note}


# ------------------------------------------------------------------------------------------ runner


class Report:
    """The rows measured so far, written to the JSON file after each one."""

    def __init__(self, path: Path, header: dict):
        self.path, self.header, self.rows, self.errors = path, header, [], 0

    def add(self, row: dict) -> dict:
        self.rows.append(row)
        self.write()
        return row

    def write(self) -> None:
        doc = {**self.header, "elapsed_minutes": round((time.perf_counter() - STARTED) / 60, 2), "rows": self.rows}
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        tmp.replace(self.path)

    def run(self, row: dict, fn: Callable[[], dict]) -> dict:
        """``row`` updated with ``fn()``'s figures, or with the error that stopped it."""
        try:
            row.update(fn())
            row["status"] = "ok"
        except Exception as e:  # one failed configuration must not lose the others
            traceback.print_exc()
            row.update(status="error", error=f"{type(e).__name__}: {e}"[:500])
            self.errors += 1
        finally:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return self.add(row)

    def skip(self, row: dict, reason: str) -> dict:
        return self.add({**row, "status": "skipped", "skipped": reason})


def layout_name(channels_last: bool) -> str:
    return "channels_last" if channels_last else "NCHW"


def step_name(r: dict) -> str:
    return f"{r['method']} {r['precision']} {layout_name(r['channels_last'])} {'compiled' if r['compile'] else 'eager'}"


def log(msg: str) -> None:
    print(f"[gpu_bench {time.perf_counter() - STARTED:6.1f}s] {msg}", flush=True)


def throughput_rows(a: argparse.Namespace, report: Report, base: list[str]) -> dict[tuple, dict]:
    """The eager rows: every method x precision x layout. Returns them by (method, precision, layout)."""
    eager: dict[tuple, dict] = {}
    for method in a.methods:
        for precision in PRECISIONS:
            for cl in LAYOUTS:
                row = {"kind": "step", "method": method, "precision": precision, "channels_last": cl, "compile": False}
                over = [*base, f"train.precision={precision}", f"model.channels_last={str(cl).lower()}"]
                eager[method, precision, cl] = report.run(
                    row, lambda o=over, m=method: measure(m, o, a.steps, a.warmup))
                log(f"{step_name(row)}: {row.get('images_per_s', row.get('error'))} images/s")
    return eager


def compiled_rows(a: argparse.Namespace, report: Report, base: list[str], eager: dict[tuple, dict],
                  deadline: float) -> None:
    """The compiled rows: those ``--compile`` picks, while the time budget allows; the rest skipped."""
    chosen = set()
    if a.compile == "all":
        chosen = set(eager)
    elif a.compile == "fastest":
        for method in a.methods:
            ok = [(r["images_per_s"], k) for k, r in eager.items() if k[0] == method and r["status"] == "ok"]
            if ok:
                chosen.add(max(ok)[1])
    took: list[float] = []  # seconds each compiled configuration took, compiling included
    keep = a.min_train_minutes * 60
    for key, eager_row in eager.items():
        method, precision, cl = key
        row = {"kind": "step", "method": method, "precision": precision, "channels_last": cl, "compile": True}
        if key not in chosen:
            if a.compile == "none":
                reason = a.compile_reason or "--compile none"
            elif eager_row["status"] != "ok":
                reason = "the eager configuration failed"
            else:
                reason = "--compile fastest compiles each method at its fastest eager setting only (--compile all)"
            report.skip(row, reason)
            continue
        estimate = 1.1 * max(took) if took else FIRST_COMPILE_ESTIMATE_S
        left = deadline - time.perf_counter() - keep
        if left < estimate:
            report.skip(row, f"time budget: {max(0.0, left):.0f} s left before the {keep / 60:g} min kept for "
                             f"training; a compiled configuration takes about {estimate:.0f} s")
            log(f"{step_name(row)}: skipped (time budget)")
            continue
        over = [*base, f"train.precision={precision}", f"model.channels_last={str(cl).lower()}", "train.compile=true"]

        def run(o=over, m=method, e=eager_row) -> dict:
            torch._dynamo.reset()  # a fresh cache: no configuration runs into another's recompile limit
            r = measure(m, o, a.steps, max(a.warmup, 3))
            r["compile_and_warmup_s"] = r["warmup_wall_s"]
            if e.get("images_per_s"):
                r["vs_eager"] = round(r["images_per_s"] / e["images_per_s"], 3)
            return r

        t = time.perf_counter()
        report.run(row, run)
        took.append(time.perf_counter() - t)
        log(f"{step_name(row)}: {row.get('images_per_s', row.get('error'))} images/s")


def pipeline_rows(a: argparse.Namespace, report: Report, base: list[str]) -> None:
    over = [*base, "train.precision=auto"]
    own = {"kind": "pipeline", "method": "simclr", "pipeline": "selfsup",
           "description": "selfsup: uint8 batches on the device, views built there in batch"}
    report.run(own, lambda: measure("simclr", over, a.peer_steps, a.warmup))
    log(f"pipeline selfsup: {own.get('images_per_s', own.get('error'))} images/s")
    peer = {"kind": "pipeline", "method": "simclr", "pipeline": "peer",
            "description": "peer: DataLoader workers, PIL augmentation per image on the host"}
    report.run(peer, lambda: measure_peer(over, a.peer_steps, a.warmup, a.workers))
    if peer["status"] == "ok":
        n = peer["workers"]
        peer["description"] = f"peer: DataLoader, {n} worker{'s' if n != 1 else ''}, PIL per image"
        if own.get("images_per_s"):
            peer["vs_selfsup"] = round(peer["images_per_s"] / own["images_per_s"], 3)
        report.write()
    log(f"pipeline peer: {peer.get('images_per_s', peer.get('error'))} images/s")


def train_row(a: argparse.Namespace, report: Report, base: list[str], deadline: float) -> None:
    row = {"kind": "train", "method": "simclr", "k": 200, "temperature": 0.1}
    if a.train_minutes is not None:
        minutes = a.train_minutes
    else:
        minutes = (deadline - time.perf_counter() - a.reserve_seconds) / 60
        if minutes < a.min_train_minutes / 2:
            report.skip(row, f"time budget: {max(0.0, minutes):.2f} min left of --minutes {a.minutes:g}")
            return
    row["budget_minutes"] = round(minutes, 3)
    log(f"budgeted SimCLR run: {minutes:.2f} min")

    def run() -> dict:
        runs = a.out / "runs"
        cfg = load_config("simclr", [*base, "train.precision=auto", f"train.budget_minutes={minutes:.4f}",
                                     "train.knn_every=0", "train.checkpoint_every=1000000", "eval.knn_k=200",
                                     "eval.knn_temperature=0.1", f"run.dir={runs}", "run.name=simclr-budget"])
        res = pretrain(cfg, force=True, progress=False)
        fr = res.fit
        last = fr.history[-1] if fr.history else {}
        init = None
        for line in (res.run_dir / "metrics.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if rec.get("epoch") == 0 and "knn_top1" in rec:
                init = rec["knn_top1"]
                break
        shutil.rmtree(res.run_dir / "checkpoints", ignore_errors=True)  # 100+ MB of weights nobody reads here
        train_s = sum(h.get("epoch_time_s", 0.0) for h in fr.history)
        return {"precision": cfg.train.precision, "channels_last": cfg.model.channels_last, "epochs": fr.epochs,
                "steps": fr.steps, "planned_steps": fr.planned_steps, "minutes": round(fr.minutes, 3),
                "images_per_s": round(fr.steps * cfg.train.batch_size / train_s, 1) if train_s else None,
                "knn_top1": last.get("knn_top1"), "knn_top5": last.get("knn_top5"), "knn_top1_init": init,
                "final_loss": last.get("loss"), "run_dir": str(res.run_dir)}

    report.run(row, run)
    if row["status"] == "ok":
        log(f"budgeted SimCLR: {row['epochs']} epochs, kNN top-1 {row['knn_top1']:.2f}% "
            f"(before training {row['knn_top1_init']:.2f}%)")
    else:
        log(f"budgeted SimCLR: {row.get('error')}")


# ------------------------------------------------------------------------------------------- table


def pct(x) -> str:
    return f"{100 * x:.0f}%"


def fmt_split(r: dict) -> str:
    s = r.get("split")
    return f"{pct(s['data'])} / {pct(s['augment'])} / {pct(s['compute'])}" if s else "-"


def markdown(doc: dict) -> str:
    rows = doc["rows"]
    lines = [f"{doc['device']} ({doc['device_type']}), torch {doc['torch']}, {doc['date']}; "
             f"ResNet-18 x{doc['settings']['width']}, {SIDE} px, batch {doc['settings']['batch_size']}; "
             f"data: {doc['data']['source']}", "",
             "| benchmark | configuration | images/s | relative | data / aug / compute | note |",
             "|---|---|---|---|---|---|"]
    base = {r["method"]: r.get("images_per_s") for r in rows
            if r["kind"] == "step" and r["precision"] == "fp32" and not r["channels_last"] and not r["compile"]}
    own = next((r.get("images_per_s") for r in rows if r["kind"] == "pipeline" and r["pipeline"] == "selfsup"), None)

    def cell(r: dict, ref) -> tuple[str, str]:
        ips = r.get("images_per_s")
        if r["status"] != "ok" or not ips:
            return "-", "-"
        return f"{ips:.1f}", (f"{ips / ref:.2f}" if ref else "")

    for r in rows:
        if r["status"] == "skipped":
            note = f"skipped: {r['skipped']}"
        elif r["status"] == "error":
            note = f"error: {r['error']}"
        else:
            note = ""
        if r["kind"] == "step":
            ips, rel = cell(r, base.get(r["method"]))
            if r["compile"] and r["status"] == "ok":
                note = f"{r['vs_eager']:.2f}x eager, compile + warm-up {r['compile_and_warmup_s']:.0f} s" \
                    if "vs_eager" in r else f"compile + warm-up {r['compile_and_warmup_s']:.0f} s"
            lines.append(f"| step | {step_name(r)} | {ips} | {rel} | {fmt_split(r) if r['status'] == 'ok' else '-'} "
                         f"| {note} |")
        elif r["kind"] == "pipeline":
            ips, rel = cell(r, own)
            if r["status"] == "ok":
                setting = f"{r['precision']}, {layout_name(r['channels_last'])}"
                note = "; ".join(x for x in (setting, r.get("note")) if x)
            lines.append(f"| pipeline | {r['method']} {r['description']} | {ips} | {rel} | "
                         f"{fmt_split(r) if r['status'] == 'ok' else '-'} | {note} |")
        else:
            ips, _ = cell(r, None)
            if r["status"] == "ok":
                def f(v):
                    return "-" if v is None else f"{v:.2f}%"
                note = (f"{r['epochs']} epochs ({r['steps']} steps) in {r['minutes']:.2f} min of a "
                        f"{r['budget_minutes']:g} min budget; kNN top-1 {f(r['knn_top1'])} (before training "
                        f"{f(r['knn_top1_init'])}), k={r['k']}, T={r['temperature']}; {r['precision']}, "
                        f"{layout_name(r['channels_last'])}")
            lines.append(f"| train | {r['method']} budgeted, {doc['data']['train_images']} images | {ips} | | - "
                         f"| {note} |")
    if doc["data"].get("note"):
        lines += ["", f"Note: {doc['data']['note']}."]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- main


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return cpu_name()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (the default), cuda:N or cpu")
    p.add_argument("--smoke", action="store_true",
                   help="tiny synthetic data, width 0.125, batch 16, 2 timed steps, a few seconds of training")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: benchmarks/results/gpu)")
    p.add_argument("--data", type=Path, default=None,
                   help="CIFAR-10 NumPy folder (train_x.npy, ...; default: ../shared/data/cifar10)")
    p.add_argument("--synthetic", action="store_true", help="random images and labels instead of CIFAR-10")
    p.add_argument("--prepare-data", action="store_true", help="write the data file into --out and exit")
    p.add_argument("--train-images", type=int, default=None, help="default 10000 (smoke: 256)")
    p.add_argument("--test-images", type=int, default=None, help="default 2000 (smoke: 64)")
    p.add_argument("--width", type=float, default=None, help="ResNet-18 width (default 1.0; smoke: 0.125)")
    p.add_argument("--batch-size", type=int, default=None, help="default 512 (smoke: 16)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per configuration (default 30; smoke: 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5; smoke: 1)")
    p.add_argument("--peer-steps", type=int, default=None, help="timed steps of the pipeline rows (default 40)")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers of the peer pipeline (default: CPUs available - 1; smoke: 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads of the main process (default: torch's; smoke: 1)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    p.add_argument("--compile", choices=("fastest", "all", "none"), default=None,
                   help="compiled rows: each method's fastest eager setting (default), all, or none "
                        "(default on a CPU with --smoke: none)")
    p.add_argument("--minutes", type=float, default=None,
                   help="wall-clock budget of the whole run; the budgeted training gets what is left "
                        "(default 8.0, for under 9 minutes on one H100)")
    p.add_argument("--train-minutes", type=float, default=None,
                   help="the budgeted training's own budget instead of what is left (smoke default: 0.1)")
    p.add_argument("--min-train-minutes", type=float, default=None,
                   help="time kept for the budgeted training when deciding to compile (default 2.0)")
    a = p.parse_args(argv)

    smoke = a.smoke
    defaults = dict(train_images=256 if smoke else 10000, test_images=64 if smoke else 2000,
                    width=0.125 if smoke else 1.0, batch_size=16 if smoke else 512, steps=2 if smoke else 30,
                    warmup=1 if smoke else 5, peer_steps=2 if smoke else 40, minutes=2.0 if smoke else 8.0,
                    train_minutes=0.1 if smoke else None, min_train_minutes=0.1 if smoke else 2.0)
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.workers is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        a.workers = 1 if smoke else max(1, cpus - 1)

    a.methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    bad = [m for m in a.methods if m not in METHODS]
    if bad or not a.methods:
        p.error(f"--methods: unknown {', '.join(bad) or '(empty)'}; choose from {', '.join(METHODS)}")
    for name in ("train_images", "test_images", "batch_size", "steps", "peer_steps"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(a, name)}")
    if a.batch_size < 2:
        p.error("--batch-size must be at least 2 (contrastive losses need negatives)")
    if a.threads is None and smoke:
        a.threads = 1  # a shared CI runner: several threads per op oversubscribe its cores
    if a.threads is not None and a.threads < 1:
        p.error(f"--threads must be at least 1, got {a.threads}")
    if a.warmup < 0 or a.workers < 0:
        p.error("--warmup and --workers must not be negative")
    if not a.width > 0:
        p.error(f"--width must be positive, got {a.width}")
    for name in ("minutes", "min_train_minutes"):
        if not getattr(a, name) > 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(a, name)}")
    if a.train_minutes is not None and not a.train_minutes > 0:
        p.error(f"--train-minutes must be positive, got {a.train_minutes}")
    if a.train_images < a.batch_size:
        p.error(f"--train-images {a.train_images} is fewer than one batch of {a.batch_size}")
    need = (a.train_images + a.test_images) * (SIDE * SIDE * 3 + 1)
    if need > MAX_DATA_BYTES:
        p.error(f"{a.train_images} + {a.test_images} images make a {need / 1e6:.0f} MB data file, over the "
                f"{MAX_DATA_BYTES / 1e6:.0f} MB limit; lower --train-images / --test-images")
    if a.data is not None and not a.data.is_dir():
        p.error(f"--data {a.data}: no such folder")
    if a.data is not None and a.synthetic:
        p.error("--data and --synthetic exclude each other")
    a.synthetic_reason = "--smoke" if smoke else ("--synthetic" if a.synthetic else None)
    a.data = a.data or DEFAULT_DATA
    if a.synthetic_reason:
        a.data = None  # not read
    try:
        dev = torch.device(a.device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cuda", "cpu"):
        p.error(f"--device {a.device}: use cuda, cuda:N or cpu")
    if dev.type == "cuda" and not a.prepare_data:
        if not torch.cuda.is_available():
            p.error(f"--device {a.device}: no CUDA device here (torch {torch.__version__}); "
                    "on a machine without a GPU run: benchmarks/gpu.sh --device cpu --smoke")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            p.error(f"--device {a.device}: only {torch.cuda.device_count()} CUDA devices")
    a.compile_reason = None
    if a.compile is None:
        if dev.type == "cpu" and smoke:
            a.compile = "none"
            a.compile_reason = "smoke mode on a CPU: torch.compile takes about 70 s there (--compile to force)"
        else:
            a.compile = "fastest"
    a.reserve_seconds = 5.0 if smoke else 20.0  # writing the report and leaving after the budgeted run
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    deadline = STARTED + a.minutes * 60
    a.out = a.out.resolve()
    a.out.mkdir(parents=True, exist_ok=True)
    npz, data = make_data(a)
    log(f"data: {data['file']} ({data['megabytes']} MB; {data['source']})")
    if data["note"]:
        log(f"note: {data['note']}")
    if a.prepare_data:
        return 0
    header = {
        "benchmark": "benchmarks/gpu_bench.py", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device": device_name(a.device), "device_type": torch.device(a.device).type, "torch": torch.__version__,
        "cuda": torch.version.cuda, "python": platform.python_version(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "command": " ".join(sys.argv),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()
                     if k not in ("synthetic_reason", "compile_reason", "reserve_seconds")},
        "data": data,
    }
    if torch.device(a.device).type == "cuda":
        header["tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
    report = Report(a.out / "gpu_bench.json", header)
    scratch = Path(tempfile.mkdtemp(prefix="gpu_bench_data_"))
    try:
        unpack(npz, scratch)
        base = [f"data.path={scratch}", f"model.width={a.width}", f"train.batch_size={a.batch_size}",
                f"train.device={a.device}"]
        eager = throughput_rows(a, report, base)
        pipeline_rows(a, report, base)  # before compiling: the compiled rows take the most time
        compiled_rows(a, report, base, eager, deadline)
        # Rows in matrix order: method, precision, layout, eager then compiled; then the others.
        order = {(m, p, cl, c): i for i, (m, p, cl, c) in enumerate(
            (m, p, cl, c) for m in a.methods for p in PRECISIONS for cl in LAYOUTS for c in (False, True))}
        report.rows.sort(key=lambda r: order.get((r["method"], r["precision"], r["channels_last"], r["compile"]), 10**6)
                         if r["kind"] == "step" else 10**6)
        train_row(a, report, base, deadline)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report.write()
    table = markdown({**report.header, "rows": report.rows})
    (a.out / "gpu_bench.md").write_text(table + "\n")
    print("\n" + table, flush=True)
    log(f"wrote {report.path} and {a.out / 'gpu_bench.md'}; {report.errors} rows with errors")
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
