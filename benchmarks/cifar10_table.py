"""Print the CIFAR-10 results (``benchmarks/results/cifar10_knn.jsonl``) as one Markdown table.

One row per run, grouped by family (contrastive, clustering, ReLIC, pretext; file order inside a
method); a run repeated with the same recipe, budget and overrides keeps
its last line. ``own NMI`` is a clustering method's last pseudo-labelling scored against the true
labels; ``k-means NMI`` clusters the test features (K = 10) and scores them the same way.

    python benchmarks/cifar10_table.py
    python benchmarks/cifar10_table.py --epochs 4 --subset 10000     # one budget only
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--file", type=Path, default=RESULTS)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--subset", type=int, default=None)
    a = p.parse_args()
    rows: dict[tuple, dict] = {}
    for line in a.file.read_text().splitlines():
        r = json.loads(line)
        if (a.epochs and r["epochs"] != a.epochs) or (a.subset and r["subset"] != a.subset):
            continue
        key = (r["recipe"], r["epochs"], r["subset"], r["width"], tuple(r["overrides"]))
        rows.pop(key, None)
        rows[key] = r
    print("| method | overrides | kNN top-1 | random init | gain | k-means NMI (random) | own NMI | pretrain min |")
    print("|---|---|---|---|---|---|---|---|")
    rank = {name: i for i, name in enumerate(ORDER)}
    for r in sorted(rows.values(), key=lambda r: rank.get(r["method"], len(ORDER))):
        nmi = r.get("test_kmeans_nmi")
        nmi_cell = "-" if nmi is None else f"{nmi:.3f} ({r['random_init_test_kmeans_nmi']:.3f})"
        settings = " ".join(r["overrides"] + ([f"--batch-size {r['batch_size']}"] if r["batch_size"] != 256 else []))
        print(f"| {r['method']} | {settings or '-'} | {r['knn_top1']:.2f} | "
              f"{r['random_init_knn_top1']:.2f} | {r['knn_top1'] - r['random_init_knn_top1']:+.2f} | {nmi_cell} | "
              f"{fmt(r.get('own_nmi_labels'), digits=3)} | {r['pretrain_wall_min']} |")


if __name__ == "__main__":
    main()
