"""selfsup's training loop against a minimal hand-written PyTorch loop, same work, one process.

Both loops train the same SimCLR (same backbone, projector, batch, views and optimizer) on the
same in-memory data; the minimal loop is the ~10 lines anyone would write (cut batch, build
views, forward, NT-Xent, backward, step). The two are interleaved (A, B, A, B, ...) so that a
noisy machine slows both alike, and the ratio of their median step times is printed.

Three loops take turns: the minimal loop in fp32 and the default memory layout, selfsup's loop
with the same settings (its overhead), and selfsup's loop at its defaults (``train.precision:
auto``, ``model.channels_last`` on: the speed a user gets), on its own copy of the model.

    python benchmarks/overhead.py --width 0.25 --batch-size 256 --steps 20 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from selfsup.config import load_config
from selfsup.data.datasets import ArrayDataset
from selfsup.data.loader import BatchLoader
from selfsup.losses import nt_xent
from selfsup.train.optim import build_optimizer
from selfsup.train.precision import resolve_fast_defaults
from selfsup.train.pretrain import build_method, build_views
from selfsup.train.trainer import fit


def minimal_loop(method, loader, recipe, optimizer, steps: int) -> float:
    g = torch.Generator().manual_seed(0)
    t = time.perf_counter()
    done = 0
    while done < steps:
        for images, _, index in loader:
            views = recipe(images, g, index)
            z1, z2 = (method.projector(method.backbone(v)) for v in views)
            loss = nt_xent(z1, z2, 0.5)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            if done == steps:
                break
    return (time.perf_counter() - t) / steps


def selfsup_loop(method, loader, recipe, cfg, steps: int) -> float:
    cfg.max_steps = steps
    cfg.epochs = -(-steps // len(loader))
    t = time.perf_counter()
    fit(method, loader, recipe, cfg, None, progress=False)
    return (time.perf_counter() - t) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    common = [f"model.width={a.width}", f"train.batch_size={a.batch_size}", "train.optimizer=sgd", "train.lr=0.1",
              "train.warmup_epochs=0", "train.log_every=10", "method.hidden_dim=512", "views.size=32",
              "views.mean=[0.5,0.5,0.5]", "views.std=[0.25,0.25,0.25]"]
    cfg = load_config("simclr", common + ["train.precision=fp32", "model.channels_last=false"])
    fast = load_config("simclr", common)
    fast_line = resolve_fast_defaults(fast, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    n = a.batch_size * 8
    ds = ArrayDataset(torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
                      torch.zeros(n, dtype=torch.long), [], "synthetic")
    recipe = build_views(cfg)
    method = build_method(cfg)
    fast_method = build_method(fast)
    if fast.model.channels_last:
        fast_method = fast_method.to(memory_format=torch.channels_last)
    loader = BatchLoader(ds, a.batch_size, seed=0)
    optimizer = build_optimizer("sgd", method, 0.1, cfg.train.weight_decay)
    minimal_loop(method, loader, recipe, optimizer, 2)  # warm-up
    selfsup_loop(fast_method, loader, recipe, fast.train, 2)
    mins, ours, fasts = [], [], []
    for _ in range(a.rounds):
        mins.append(minimal_loop(method, loader, recipe, optimizer, a.steps))
        ours.append(selfsup_loop(method, loader, recipe, cfg.train, a.steps))
        fasts.append(selfsup_loop(fast_method, loader, recipe, fast.train, a.steps))
    ratio = statistics.median(ours) / statistics.median(mins)
    speedup = statistics.median(mins) / statistics.median(fasts)
    print(json.dumps({"minimal_s_per_step": [round(x, 4) for x in mins],
                      "selfsup_s_per_step": [round(x, 4) for x in ours],
                      "selfsup_defaults_s_per_step": [round(x, 4) for x in fasts],
                      "defaults": fast_line, "overhead_ratio": round(ratio, 4),
                      "defaults_speedup": round(speedup, 4), "width": a.width, "batch_size": a.batch_size,
                      "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
                      "date": time.strftime("%Y-%m-%d")}, indent=2))
    print(f"selfsup / minimal loop step time, both fp32: {ratio:.3f} ({(ratio - 1) * 100:+.1f}%)")
    print(f"selfsup at its defaults ({fast_line}): {speedup:.2f}x the minimal fp32 loop's images/s")


if __name__ == "__main__":
    main()
