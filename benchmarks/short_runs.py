"""SimCLR in short runs: selfsup's recipe, a plain hand-written loop, and the ablations between them.

Every row trains SimCLR on the same CIFAR-10 images for the same epochs from the same seed and is
scored by the same weighted kNN (k=200, T=0.1, cosine; the training images as the bank, the
10,000 test images as queries) every ``--knn-every`` epochs, so the rows compare at equal epochs;
the seconds spent training (eval excluded) give a kNN-against-minutes curve for each row too.

A row is either selfsup (``pretrain`` with the recipe and the row's ``section.key=value``
overrides) or the plain loop: the loop anyone would write from the SimCLR paper and lightly's
CIFAR-10 benchmark (kornia's augmentation as the reference implementation of the SimCLR views,
NT-Xent written inline, a 512-wide head, SGD lr 0.06 x B/256 with momentum 0.9, weight decay
5e-4 on every parameter, cosine per step, no warm-up, torchvision's ResNet init without
zero-init residuals), on selfsup's ResNet-18 at the same width. Both run in bf16 autocast with
channels_last unless a row says otherwise, so the rows differ in what they learn, not how fast.

    python benchmarks/short_runs.py                      # every row in ROWS, one after the other
    python benchmarks/short_runs.py --rows plain,recipe --subset 10000 --epochs 15

One JSON line per row goes to benchmarks/results/short_runs.jsonl (with machine and date); the
plain rows need ``pip install kornia``. ``--plot ROWS`` draws kNN top-1 against training minutes
for those rows' latest records into benchmarks/results/short_runs.png and trains nothing:

    python benchmarks/short_runs.py --plot plain,recipe,defaults
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from throughput import cpu_name
from torch import nn

from selfsup.config import load_config
from selfsup.models.resnet import ResNet
from selfsup.train.checkpoint import seed_everything
from selfsup.train.pretrain import (
    build_views,
    knn_monitor,
    load_test_data,
    load_train_data,
    pretrain,
    resolve_normalization,
    resolve_view_size,
)

RESULTS = Path(__file__).parent / "results"
BUDGET_LIKE = ["train.warmup_epochs=budget"]  # 10% of the epochs: a budgeted run caps the recipe's 10 at that
SGD = ["train.optimizer=sgd", "train.lr=0.06", "train.weight_decay=5e-4", "train.momentum=0.9"]

# name: ("selfsup", overrides) or ("plain", options)
ROWS: dict[str, tuple[str, object]] = {
    "plain": ("plain", {"aug": "kornia"}),
    "recipe": ("selfsup", BUDGET_LIKE),
    "sgd": ("selfsup", SGD + ["train.warmup_epochs=0"]),
    "sgd+head512": ("selfsup", SGD + ["train.warmup_epochs=0", "method.hidden_dim=512"]),
    "head512": ("selfsup", BUDGET_LIKE + ["method.hidden_dim=512"]),
    "no-warmup": ("selfsup", ["train.warmup_epochs=0"]),
    "plain+selfsup-aug": ("plain", {"aug": "selfsup"}),
    "recipe-fp32": ("selfsup", BUDGET_LIKE + ["train.precision=fp32", "model.channels_last=false"]),
    "t0.2": ("selfsup", BUDGET_LIKE + ["method.temperature=0.2"]),
    "batch256": ("selfsup", BUDGET_LIKE + ["train.batch_size=256"]),
    "crop0.2": ("selfsup", BUDGET_LIKE + ["views.options.scale_min=0.2"]),
    "sgd+head512+no-zero-init": ("selfsup", SGD + ["train.warmup_epochs=0", "method.hidden_dim=512",
                                                   "model.zero_init_residual=false"]),
    "no-zero-init": ("selfsup", BUDGET_LIKE + ["model.zero_init_residual=false"]),
}


def nt_xent(z0: torch.Tensor, z1: torch.Tensor, temperature: float) -> torch.Tensor:
    z = F.normalize(torch.cat([z0, z1]).float(), dim=1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    n = z0.shape[0]
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(sim, target)


def kornia_views(mean, std, size: int):
    import kornia.augmentation as K

    aug = nn.Sequential(K.RandomResizedCrop((size, size), scale=(0.08, 1.0)), K.RandomHorizontalFlip(),
                        K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8), K.RandomGrayscale(p=0.2),
                        K.Normalize(torch.tensor(mean), torch.tensor(std)))
    return lambda x, g, index: [aug(x.float() / 255), aug(x.float() / 255)]


def plain_loop(cfg, train_set, monitor, options: dict, epochs: int, knn_every: int) -> list[dict]:
    seed_everything(cfg.train.seed)
    bf16 = options.get("precision", "bf16") == "bf16"
    backbone = ResNet("resnet18", "cifar", cfg.model.width, zero_init_residual=False)
    head = nn.Sequential(nn.Linear(backbone.out_dim, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
                         nn.Linear(512, 128))
    model = nn.ModuleDict({"backbone": backbone, "head": head}).to(memory_format=torch.channels_last)
    b = cfg.train.batch_size
    opt = torch.optim.SGD(model.parameters(), lr=0.06 * b / 256, momentum=0.9, weight_decay=5e-4)
    images = train_set.images  # uint8 (N, 3, H, W)
    steps = len(images) // b
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps)
    if options["aug"] == "kornia":
        views = kornia_views(cfg.views.mean, cfg.views.std, cfg.views.size)
    else:  # selfsup's SimCLR views
        views = build_views(cfg, train_set, torch.device("cpu"))
    g = torch.Generator().manual_seed(cfg.train.seed)
    trace, seconds = [{"epoch": 0, "train_s": 0.0, **monitor(backbone)}], 0.0
    for epoch in range(epochs):
        model.train()
        t = time.perf_counter()
        perm = torch.randperm(len(images), generator=g)
        for i in range(steps):
            idx = perm[i * b:(i + 1) * b]
            v0, v1 = (v.contiguous(memory_format=torch.channels_last) for v in views(images[idx], g, idx)[:2])
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                z0, z1 = head(backbone(v0)), head(backbone(v1))
            loss = nt_xent(z0, z1, 0.5)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        seconds += time.perf_counter() - t
        if (epoch + 1) % knn_every == 0 or epoch + 1 == epochs:
            model.eval()
            trace.append({"epoch": epoch + 1, "train_s": round(seconds, 1), "loss": round(loss.item(), 4),
                          **monitor(backbone)})
            print(trace[-1], flush=True)
    return trace


def selfsup_run(name: str, overrides: list[str], base: list[str]) -> list[dict]:
    cfg = load_config("simclr", base + [f"run.name={name}", *overrides])
    result = pretrain(cfg, force=True, progress=False)
    seconds, trace = 0.0, []
    for line in (result.run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "epoch_time_s" in r:  # an epoch's record (with the kNN of its end, if measured)
            seconds += r["epoch_time_s"]
        if "knn_top1" in r and ("epoch_time_s" in r or r["epoch"] == 0):  # not the monitor's own copy
            trace.append({"epoch": r["epoch"], "train_s": round(seconds, 1), "top1": r["knn_top1"]})
    return trace


def plot(results: Path, rows: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latest = {}
    for line in results.read_text().splitlines():
        r = json.loads(line)
        latest[r["row"]] = r
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in rows:
        r = latest[name]
        ax.plot([t["train_s"] / 60 for t in r["trace"]], [t["top1"] for t in r["trace"]], marker="o", label=name)
    r = latest[rows[0]]
    ax.set(xlabel="training minutes (evaluation excluded)", ylabel="kNN top-1 (%), k=200, T=0.1",
           title=f"SimCLR, CIFAR-10 first {r['subset']:,}, R18 x{r['width']:g}, batch {r['batch_size']}\n"
                 f"{r['machine']}, {r['cpu_threads']} threads, {r['date']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of: {', '.join(ROWS)}")
    p.add_argument("--data", default="../shared/data/cifar10")
    p.add_argument("--subset", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--knn-every", type=int, default=5)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--out", type=Path, default=RESULTS / "short_runs.jsonl")
    p.add_argument("--plot", default=None, help="comma-separated rows to plot from --out (trains nothing)")
    a = p.parse_args()
    if a.plot:
        plot(a.out, a.plot.split(","), a.out.with_suffix(".png"))
        return
    base = [f"data.path={a.data}", f"data.subset={a.subset}", f"model.width={a.width}", f"train.epochs={a.epochs}",
            f"train.knn_every={a.knn_every}", f"train.checkpoint_every={a.epochs}", "eval.knn_k=200",
            "eval.knn_temperature=0.1", f"run.dir={RESULTS / 'runs'}"]
    cfg = load_config("simclr", base)
    for name in a.rows.split(","):
        kind, spec = ROWS[name]
        t = time.perf_counter()
        if kind == "plain":
            seed_everything(cfg.train.seed)
            train_set = load_train_data(cfg)
            resolve_normalization(cfg, train_set)
            resolve_view_size(cfg, train_set)
            mon = knn_monitor(cfg, train_set, load_test_data(cfg), torch.device("cpu"))
            raw = plain_loop(cfg, train_set, mon, spec, a.epochs, a.knn_every)
            trace = [{"epoch": r["epoch"], "train_s": r["train_s"], "top1": r["top1"]} for r in raw]
        else:
            spec = [o.replace("=budget", f"={a.epochs / 10:g}") for o in spec]
            trace = selfsup_run(f"short-{name}", spec, base)
        record = {"row": name, "kind": kind, "spec": spec, "subset": a.subset, "epochs": a.epochs,
                  "batch_size": cfg.train.batch_size, "width": a.width, "trace": trace,
                  "knn_top1": trace[-1]["top1"], "random_init_top1": trace[0]["top1"],
                  "wall_s": round(time.perf_counter() - t, 1), "machine": cpu_name(),
                  "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
                  "date": datetime.date.today().isoformat()}
        print(json.dumps(record), flush=True)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        with a.out.open("a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
