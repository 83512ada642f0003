"""Print the CIFAR-10 results (``benchmarks/results/cifar10_knn.jsonl``) as Markdown tables.

First the wall-clock tables (rows run with ``--budget-minutes``, one table per budget: epochs and
images/s reached, kNN, linear probe and k-means NMI next to random init), then the fixed-epoch
table. One row per run, grouped by family (contrastive, clustering, ReLIC, pretext; file order inside a
method); a run repeated with the same recipe, budget and overrides keeps
its last line. ``own NMI`` is a clustering method's last pseudo-labelling scored against the true
labels; ``k-means NMI`` clusters the test features (K = 10) and scores them the same way.

    python benchmarks/cifar10_table.py
    python benchmarks/cifar10_table.py --budget 30                   # the 30-minute table only
    python benchmarks/cifar10_table.py --epochs 4 --subset 10000     # one fixed-epoch budget only
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "cifar10_knn.jsonl"
ORDER = ["simclr", "invaspread", "dim", "amdim", "instdisc", "moco_v1", "moco_v2", "moco_v3", "byol", "clip",
         "deepcluster", "sela", "swav", "pcl", "relic", "relicv2", "rotation", "colorization", "inpainting", "jigsaw",
         "relative_position", "counting", "transitive", "multitask"]


def fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


RANK = {name: i for i, name in enumerate(ORDER)}


def family_order(r: dict) -> int:
    return RANK.get(r["method"], len(ORDER))


def budget_table(rows: list[dict]) -> None:
    """One wall-clock budget's rows: what each recipe reaches in the same minutes."""
    r0 = rows[0]
    print(f"{r0['budget_minutes']:g} minutes per row, {r0['subset']} training images, width {r0['width']:g}, "
          f"batch {r0['batch_size']}, kNN k=200 T={r0['knn_temperature']:g}; {r0['machine']}, {r0['date']}\n")
    print("| method | overrides | epochs | steps | img/s | kNN top-1 (random) | gain | linear top-1 (random) | "
          "k-means NMI (random) | own NMI | wall min |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=family_order):
        linear = r.get("linear_top1")
        linear_cell = "-" if linear is None else f"{linear:.2f} ({r['random_init_linear_top1']:.2f})"
        epochs = r.get("epochs_done", r["steps"] / (r["subset"] // r["batch_size"]))
        print(f"| {r['method']} | {' '.join(r['overrides']) or '-'} | {epochs:.1f} | {r['steps']} | "
              f"{r['images_per_s']:.0f} | {r['knn_top1']:.2f} ({r['random_init_knn_top1']:.2f}) | "
              f"{r['knn_top1'] - r['random_init_knn_top1']:+.2f} | {linear_cell} | "
              f"{r['test_kmeans_nmi']:.3f} ({r['random_init_test_kmeans_nmi']:.3f}) | "
              f"{fmt(r.get('own_nmi_labels'), digits=3)} | {r['pretrain_wall_min']} |")
    print()


def epochs_table(rows: list[dict]) -> None:
    print("| method | overrides | kNN top-1 | random init | gain | k-means NMI (random) | own NMI | pretrain min |")
    print("|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=family_order):
        nmi = r.get("test_kmeans_nmi")
        nmi_cell = "-" if nmi is None else f"{nmi:.3f} ({r['random_init_test_kmeans_nmi']:.3f})"
        settings = " ".join(r["overrides"] + ([f"--batch-size {r['batch_size']}"] if r["batch_size"] != 256 else []))
        print(f"| {r['method']} | {settings or '-'} | {r['knn_top1']:.2f} | "
              f"{r['random_init_knn_top1']:.2f} | {r['knn_top1'] - r['random_init_knn_top1']:+.2f} | {nmi_cell} | "
              f"{fmt(r.get('own_nmi_labels'), digits=3)} | {r['pretrain_wall_min']} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--file", type=Path, default=RESULTS)
    p.add_argument("--budget", type=float, default=None, help="only the rows of this wall-clock budget (minutes)")
    p.add_argument("--epochs", type=int, default=None, help="only the fixed-epoch rows of this many epochs")
    p.add_argument("--subset", type=int, default=None)
    a = p.parse_args()
    rows: dict[tuple, dict] = {}
    for line in a.file.read_text().splitlines():
        r = json.loads(line)
        budget = r.get("budget_minutes")
        if a.budget is not None and budget != a.budget:
            continue
        if a.epochs is not None and (budget is not None or r["epochs"] != a.epochs):
            continue
        if a.subset and r["subset"] != a.subset:
            continue
        key = (r["recipe"], budget, None if budget else r["epochs"], r["subset"], r["width"], tuple(r["overrides"]))
        rows.pop(key, None)
        rows[key] = r
    budgets = sorted({r["budget_minutes"] for r in rows.values() if r.get("budget_minutes") is not None})
    for b in budgets:
        budget_table([r for r in rows.values() if r.get("budget_minutes") == b])
    fixed = [r for r in rows.values() if r.get("budget_minutes") is None]
    if fixed:
        epochs_table(fixed)


if __name__ == "__main__":
    main()
