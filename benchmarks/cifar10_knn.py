"""Pretrain a method on CIFAR-10 at a fixed CPU budget and report kNN top-1 next to random init.

Also reported: the linear probe on cached features (``eval/linear.py``: logistic regression,
weight decay picked on a held-out tenth of the train split), k-means (K = 10) on the test
features scored by NMI against the labels, for the trained and the random-init encoder, and, for
methods that cluster (DeepCluster, SeLa, PCL), the NMI of their own last pseudo-labels with the
true labels as their log has it.

The common budget (same for every method, so the table compares like with like): ResNet-18
with the CIFAR stem at width 0.25, 32 px views, the first 20,000 training images, 10 epochs,
batch 256; kNN (k=200, T=0.07, cosine, the 20,000 images as the bank) on the full 10,000-image
test split. The run folder and one JSON line per result (with wall time, machine and date) are
written under benchmarks/results/.

``--budget-minutes`` replaces the epochs with the recipe's own wall-clock budget
(``train.budget_minutes``): the 30-minute table runs the full train split (``--subset 0``) that way,
so that each row gets the same minutes, not the same epochs; its record has the epochs and steps the
plan reached and the images/s (source images, not views). ``--threads 1`` runs a row on one core,
for two rows side by side on a 2-core machine (every row of such a table must run that way).

    python benchmarks/cifar10_knn.py simclr
    python benchmarks/cifar10_knn.py moco_v2 --epochs 10 --subset 20000
    python benchmarks/cifar10_knn.py byol --budget-minutes 30 --subset 0 --threads 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from throughput import cpu_name

from selfsup.config import load_config
from selfsup.eval.clustering import cluster_eval
from selfsup.eval.features import extract_features
from selfsup.eval.knn import knn_eval
from selfsup.eval.linear import linear_probe
from selfsup.train.checkpoint import seed_everything
from selfsup.train.pretrain import build_method, load_test_data, load_train_data, pretrain

RESULTS = Path(__file__).parent / "results"


def evaluate(cfg, backbone, train, test, temperature: float, linear: bool) -> dict:
    """kNN (k = 200, cosine), k-means NMI on the test split and, with ``linear``, the linear probe,
    all on the same cached features."""
    args = (cfg.views.mean, cfg.views.std, cfg.views.size, 512)
    f_tr, y_tr = extract_features(backbone, train, *args)
    f_te, y_te = extract_features(backbone, test, *args)
    out = {**knn_eval(f_tr, y_tr, f_te, y_te, k=200, temperature=temperature),
           "test_kmeans_nmi": cluster_eval(f_te, y_te)["nmi"]}
    if linear:
        out["linear_top1"] = linear_probe(f_tr, y_tr, f_te, y_te)["top1"]
    return out


def append_record(out: Path, record: dict) -> None:
    """Add the machine and date to ``record``, append it to the JSON lines file ``out``, print it."""
    record |= {"machine": f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
               "date": time.strftime("%Y-%m-%d")}
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as fh:
        fh.write(json.dumps(record) + "\n")
    print(json.dumps(record, indent=2))


def own_nmi(run_dir: Path) -> float | None:
    """The last ``nmi_labels`` (a clustering method's pseudo-labels against the true labels) logged."""
    found = None
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        found = json.loads(line).get("nmi_labels", found)
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe")
    p.add_argument("--data", default="../shared/data/cifar10")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--budget-minutes", type=float, default=None,
                   help="train.budget_minutes instead of --epochs (the 30-minute table)")
    p.add_argument("--subset", type=int, default=20000, help="first N training images (0: the full split)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--knn-temperature", type=float, default=0.1,
                   help="kNN temperature (0.1; records without knn_temperature used 0.07)")
    p.add_argument("--no-linear", action="store_true", help="skip the linear probe")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--name", default=None, help="run name (default: <recipe>-cifar10)")
    p.add_argument("--out", type=Path, default=RESULTS / "cifar10_knn.jsonl", help="JSON lines file to append to")
    p.add_argument("overrides", nargs="*", help="extra section.key=value overrides")
    a = p.parse_intermixed_args()
    name = a.name or f"{Path(a.recipe).stem}-cifar10"
    if a.threads:
        torch.set_num_threads(a.threads)
    length = ([f"train.budget_minutes={a.budget_minutes:g}"] if a.budget_minutes is not None else
              [f"train.epochs={a.epochs}", f"train.checkpoint_every={a.epochs}"])
    overrides = [f"data.path={a.data}", *([f"data.subset={a.subset}"] if a.subset else []),
                 f"model.width={a.width}", *length, f"train.batch_size={a.batch_size}", "train.knn_every=0",
                 "eval.knn_k=200", f"run.dir={RESULTS / 'runs'}", f"run.name={name}", *a.overrides]
    cfg = load_config(a.recipe, overrides)
    t = time.perf_counter()
    result = pretrain(cfg, force=True, progress=False)
    wall = time.perf_counter() - t
    train, test = load_train_data(cfg), load_test_data(cfg)
    trained = evaluate(cfg, result.method.backbone, train, test, a.knn_temperature, not a.no_linear)
    seed_everything(cfg.train.seed)
    random_init = evaluate(cfg, build_method(cfg, len(train)).backbone, train, test, a.knn_temperature,
                           not a.no_linear)
    fit = result.fit
    record = {"recipe": a.recipe, "method": cfg.method["name"], "epochs": fit.epochs, "subset": a.subset or len(train),
              "width": a.width, "batch_size": a.batch_size, "overrides": a.overrides,
              "budget_minutes": a.budget_minutes, "steps": fit.steps,
              "epochs_done": round(fit.steps / (len(train) // a.batch_size), 2),  # full batches an epoch
              "images_per_s": round(fit.steps * a.batch_size / wall, 1), "knn_temperature": a.knn_temperature,
              **({} if a.no_linear else {"linear_top1": round(trained["linear_top1"], 2),
                                          "random_init_linear_top1": round(random_init["linear_top1"], 2)}),
              "knn_top1": round(trained["top1"], 2), "knn_top5": round(trained["top5"], 2),
              "random_init_knn_top1": round(random_init["top1"], 2),
              "test_kmeans_nmi": round(trained["test_kmeans_nmi"], 4),
              "random_init_test_kmeans_nmi": round(random_init["test_kmeans_nmi"], 4),
              "own_nmi_labels": own_nmi(result.run_dir), "pretrain_wall_min": round(wall / 60, 1)}
    append_record(a.out, record)


if __name__ == "__main__":
    main()
