"""Training throughput and where the time goes: data loading, augmentation, compute.

Runs selfsup's own training loop (``selfsup.train.fit``) for a few steps of a method and reports
images/s and the split between cutting the uint8 batch (data), building the views on the device
(augmentation) and forward + backward + optimizer step (compute). All numbers of one invocation
come from one process, so their ratios are comparable even on a noisy machine.

    python benchmarks/throughput.py                       # SimCLR, ResNet-18 (CIFAR stem), 32 px
    python benchmarks/throughput.py --width 0.25 --batch-size 256 --steps 20
    python benchmarks/throughput.py --data ../shared/data/cifar10 --device cuda --precision bf16
    python benchmarks/throughput.py --config simclr,byol,swav --width 0.25   # one table, one process
    python benchmarks/throughput.py --config "simclr:train.precision=fp32;model.channels_last=false,simclr"
    python benchmarks/throughput.py --config "simclr,simclr:train.compile=true" --warmup 3

An entry RECIPE:KEY=VALUE;KEY=VALUE adds overrides to that entry only (a variant). With several
entries, each is measured in turn in this process and a Markdown table is printed
(images/s and the split per method, and the ratio to the first). Per-epoch work outside the steps
(clustering E-steps, graph rebuilds, mask estimation) is not counted: it is not part of a step.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from selfsup.config import load_config
from selfsup.data.datasets import ArrayDataset
from selfsup.data.loader import BatchLoader
from selfsup.eval.features import eval_batches
from selfsup.train.precision import resolve_fast_defaults
from selfsup.train.pretrain import (
    build_method,
    build_views,
    load_train_data,
    pick_device,
    resolve_normalization,
    resolve_view_size,
)
from selfsup.train.trainer import fit


def measure(config: str, overrides: list[str], steps: int, warmup: int) -> dict:
    cfg = load_config(config, overrides)
    device = pick_device(cfg.train.device)
    resolve_fast_defaults(cfg, device)  # precision auto, channels_last null: what a run would use
    ds = load_train_data(cfg) if cfg.data.path != "synthetic" else None
    if ds is None:
        g = torch.Generator().manual_seed(0)
        n = max(cfg.train.batch_size * 4, 2048)  # PCL's 1000 clusters need more images than that
        ds = ArrayDataset(torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
                          torch.zeros(n, dtype=torch.long), [], "synthetic")
    resolve_normalization(cfg, ds)
    resolve_view_size(cfg, ds)
    recipe = build_views(cfg, ds)
    method = build_method(cfg, len(ds)).to(device)
    if cfg.model.channels_last:
        method = method.to(memory_format=torch.channels_last)
    loader = BatchLoader(ds, cfg.train.batch_size, seed=0, device=device)
    cfg.train.epochs = max(1, -(-(steps + warmup) // len(loader)))
    cfg.train.warmup_epochs = 0
    cfg.train.max_steps = warmup
    batches = lambda: eval_batches(ds, cfg.views.mean, cfg.views.std, cfg.views.size, 512, device)  # noqa: E731
    t = time.perf_counter()
    fit(method, loader, recipe, cfg.train, None, progress=False, profile=True, eval_batches=batches)
    warmup_wall = time.perf_counter() - t  # with train.compile: includes compiling
    cfg.train.max_steps = steps
    t = time.perf_counter()
    res = fit(method, loader, recipe, cfg.train, None, progress=False, profile=True, eval_batches=batches)
    wall = time.perf_counter() - t
    total = sum(res.timing.values())
    return {
        "method": cfg.method["name"], "backbone": f"{cfg.model.backbone} x{cfg.model.width} ({cfg.model.stem} stem)",
        "views": f"{recipe.num_views} x {cfg.views.recipe}", "batch_size": cfg.train.batch_size,
        "precision": cfg.train.precision, "channels_last": cfg.model.channels_last, "compile": cfg.train.compile,
        "device": str(device), "steps": res.steps, "warmup_steps": warmup, "warmup_wall_s": round(warmup_wall, 2),
        "images_per_s": round(res.steps * cfg.train.batch_size / total, 1),
        "wall_s": round(wall, 2),
        "split": {k: round(v / total, 4) for k, v in res.timing.items()},
        "seconds": {k: round(v, 3) for k, v in res.timing.items()},
    }


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows. Shared by the
    benchmarks that record their machine."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="simclr")
    p.add_argument("--data", default="synthetic", help="'synthetic' (random uint8 32x32), 'digits' or a folder")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", help="auto (the default: bf16 where native) | fp32 | bf16")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    overrides = [f"data.path={a.data}", f"model.width={a.width}", f"train.batch_size={a.batch_size}",
                 f"train.device={a.device}", f"train.precision={a.precision}", *a.overrides]
    cpu = platform.processor() or platform.machine()
    machine = f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    results = []
    for entry in a.config.split(","):
        config, _, extra = entry.partition(":")
        r = measure(config, overrides + [o for o in extra.split(";") if o], a.steps, a.warmup)
        r["machine"], r["date"], r["variant"] = machine, time.strftime("%Y-%m-%d"), extra
        print(json.dumps(r), flush=True)
        results.append(r)
    for r in results:
        s = r["split"]
        print(f"{r['method']} {r['backbone']} {r['views']} batch {r['batch_size']}: {r['images_per_s']} images/s; "
              f"data {s['data']:.1%}, augmentation {s['augment']:.1%}, compute {s['compute']:.1%}")
    if len(results) > 1:
        base = results[0]["images_per_s"]
        print(f"\n{machine}, {results[0]['backbone']}, batch {a.batch_size}, {a.precision}\n")
        print("| method | views | images/s | vs " + results[0]["method"] + " | data | augmentation | compute |")
        print("|---|---|---|---|---|---|---|")
        for r in results:
            s = r["split"]
            name = r["method"] + (f" ({r['variant']})" if r["variant"] else "")
            print(f"| {name} | {r['views']} | {r['images_per_s']} | {r['images_per_s'] / base:.2f} | "
                  f"{s['data']:.1%} | {s['augment']:.1%} | {s['compute']:.1%} |")


if __name__ == "__main__":
    main()
