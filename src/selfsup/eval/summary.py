"""The standard metrics of a run, read back from the ``eval_*.json`` files the protocols wrote."""

from __future__ import annotations

import json
from pathlib import Path

# (label, file, path of keys inside the file's "trained" entry); percentages except the clustering scores.
STANDARD_METRICS: list[tuple[str, str, tuple[str, ...]]] = [
    ("kNN top-1", "eval_knn.json", ("top1",)),
    ("linear (cached) top-1", "eval_linear.json", ("top1",)),
    ("linear (augmented) top-1", "eval_linear_aug.json", ("top1",)),
    ("fine-tune 1% top-1", "eval_finetune.json", ("1pct", "top1")),
    ("fine-tune 10% top-1", "eval_finetune.json", ("10pct", "top1")),
    ("k-means NMI x100", "eval_cluster.json", ("nmi",)),
    ("k-means ARI x100", "eval_cluster.json", ("ari",)),
    ("k-means accuracy x100", "eval_cluster.json", ("accuracy",)),
]


def _dig(d: object, keys: tuple[str, ...]) -> float | None:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return float(d) if isinstance(d, (int, float)) else None


def standard_metrics(run_dir: str | Path) -> dict[str, float | None]:
    """Label -> value for each metric of ``STANDARD_METRICS`` (None where not evaluated yet).
    Clustering scores are shown x100 so that every column reads on the same 0-100 scale."""
    run_dir = Path(run_dir)
    cache: dict[str, dict] = {}
    out: dict[str, float | None] = {}
    for label, name, keys in STANDARD_METRICS:
        if name not in cache:
            p = run_dir / name
            try:
                cache[name] = json.loads(p.read_text()) if p.exists() else {}
            except json.JSONDecodeError:
                cache[name] = {}
        v = _dig(cache[name].get("trained"), keys)
        out[label] = v * 100 if v is not None and name == "eval_cluster.json" else v
    return out
