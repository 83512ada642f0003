"""A trained run's encoder on colour and on grey images, each next to its random init.

Colorization (Zhang et al. 2016) trains its encoder on the lightness L only, and the paper reports
its classification results on grayscale input too. The CIFAR-10 table evaluates every method on
colour images; this script measures what that protocol costs a method whose encoder never saw
colour: kNN (k = 200, T = 0.1) and, with ``--linear``, the linear probe, on the train and test
splits as they are and as the grey image of equal CIE L (the colorization view's input), for
the run's last checkpoint and for a random init of the same backbone and seed.

    python benchmarks/gray_protocol.py benchmarks/results/runs/colorization-b30 --threads 2 --linear

One JSON line per run is appended to ``benchmarks/results/gray_protocol.jsonl``.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch
from cifar10_knn import RESULTS, append_record, evaluate

from selfsup.config import load_config
from selfsup.data.color import gray_of_lightness
from selfsup.data.datasets import ArrayDataset
from selfsup.errors import SelfSupError
from selfsup.train.checkpoint import load_latest, seed_everything
from selfsup.train.pretrain import build_method, load_test_data, load_train_data


def grey_dataset(ds: ArrayDataset, chunk: int = 2000) -> ArrayDataset:
    """The data set with every image replaced by the grey image of equal CIE L, as uint8."""
    out = []
    for s in range(0, len(ds.images), chunk):
        grey = gray_of_lightness(ds.images[s : s + chunk].float() / 255)
        out.append((grey * 255).round().clamp(0, 255).to(torch.uint8))
    return replace(ds, images=torch.cat(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--linear", action="store_true", help="also the linear probe (slower)")
    p.add_argument("--out", type=Path, default=RESULTS / "gray_protocol.jsonl")
    a = p.parse_args()
    if not (a.run_dir / "config.yaml").is_file():
        raise SystemExit(f"error: {a.run_dir} has no config.yaml; give a run folder written by selfsup pretrain")
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = load_config(str(a.run_dir / "config.yaml"), [])
    train, test = load_train_data(cfg), load_test_data(cfg)
    trained = build_method(cfg, len(train))
    try:
        state, path = load_latest(a.run_dir)
    except SelfSupError as e:
        raise SystemExit(f"error: {e}") from None
    trained.load_state_dict(state["method"])
    seed_everything(cfg.train.seed)
    random_init = build_method(cfg, len(train))
    sets = {"colour": (train, test), "grey": (grey_dataset(train), grey_dataset(test))}
    record = {"run": a.run_dir.name, "method": cfg.method["name"], "checkpoint": path.name}
    for tag, method in (("trained", trained), ("random_init", random_init)):
        for kind, (tr, te) in sets.items():
            r = evaluate(cfg, method.backbone, tr, te, 0.1, a.linear)
            record[f"{tag}_{kind}_knn_top1"] = round(r["top1"], 2)
            if a.linear:
                record[f"{tag}_{kind}_linear_top1"] = round(r["linear_top1"], 2)
    append_record(a.out, record)


if __name__ == "__main__":
    main()
