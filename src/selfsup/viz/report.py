"""The run report: PNG plots in ``<run>/plots/`` and one self-contained HTML page
(``<run>/report.html``, every image embedded as base64, no script, no external resource).

This module only draws: :class:`ReportData` is filled by ``selfsup.eval.report`` (features,
t-SNE, neighbours, collapse indicators) and passed in. Each section is optional; a missing one is
shown as a sentence saying why.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from selfsup.data.views import ViewRecipe

NMI_NOTE = "NMI is DeepCluster's normalization, I(A;B)/sqrt(H(A)H(B))."


@dataclass
class ReportData:
    """Everything the report shows; every field but ``title`` may be empty."""

    title: str
    records: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl, in order
    config: dict[str, Any] = field(default_factory=dict)
    # One entry per evaluated encoder: {"epoch", "label", "embedding_std", "effective_rank", "dim"}.
    collapse: list[dict[str, Any]] = field(default_factory=list)
    embedding_2d: np.ndarray | None = None  # (n, 2) t-SNE of test embeddings
    embedding_labels: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)
    # (query uint8 (q, 3, H, W), query labels (q,), neighbours uint8 (q, k, 3, H, W), neighbour labels (q, k)).
    retrieval: tuple[Tensor, Tensor, Tensor, Tensor] | None = None
    preview: tuple[Tensor, ViewRecipe] | None = None  # uint8 images and the run's view recipe
    clusters: list[tuple[int, int, Tensor]] = field(default_factory=list)  # (cluster, size, uint8 samples)
    cluster_source: str = ""
    metrics_table: dict[str, float | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _integer_epochs(*axes) -> None:
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def _tile(ax, img: Tensor, title: str = "", color: str | None = None) -> None:
    ax.imshow(img.permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7, color=color or "black")
    if color:
        for s in ax.spines.values():
            s.set_edgecolor(color)
            s.set_linewidth(2)


def _series(records: list[dict], key: str, x: str, only_steps: bool = False) -> tuple[list, list]:
    xs, ys = [], []
    for r in records:
        if key in r and x in r and isinstance(r[key], (int, float)) and math.isfinite(r[key]):
            if only_steps and r.get("type") == "epoch":
                continue
            xs.append(r[x])
            ys.append(r[key])
    return xs, ys


def plot_loss_lr(records: list[dict], path: Path) -> Path | None:
    steps, loss = _series(records, "loss", "step", only_steps=True)
    lr_steps, lr = _series(records, "lr", "step")
    ep = [r for r in records if r.get("type") == "epoch" and "loss" in r]
    if not loss and not lr and not ep:
        return None
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    if loss:
        a.plot(steps, loss, lw=1, label="logged steps")
    if ep:
        a.plot([r["step"] for r in ep], [r["loss"] for r in ep], "o-", ms=3, label="epoch mean")
    a.set_xlabel("optimizer step")
    a.set_ylabel("training loss")
    a.legend(fontsize=7)
    if lr:
        b.plot(lr_steps, lr, lw=1, color="tab:green")
    else:
        b.text(0.5, 0.5, "no lr logged (train.log_every > steps)", ha="center", va="center", fontsize=8,
               transform=b.transAxes)
    b.set_xlabel("optimizer step")
    b.set_ylabel("learning rate")
    return _save(fig, path)


def _by_epoch(records: list[dict], key: str) -> tuple[list, list]:
    last: dict[int, float] = {}
    for r in records:
        if key in r and "epoch" in r and isinstance(r[key], (int, float)):
            last[int(r["epoch"])] = float(r[key])
    xs = sorted(last)
    return xs, [last[x] for x in xs]


def plot_knn(records: list[dict], path: Path) -> Path | None:
    e1, top1 = _by_epoch(records, "knn_top1")
    if not top1:
        return None
    e5, top5 = _by_epoch(records, "knn_top5")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(e1, top1, "o-", label="top-1")
    if top5:
        ax.plot(e5, top5, "s--", label="top-5")
    ax.set_xlabel("epoch (0 = random init)")
    ax.set_ylabel("online kNN accuracy (%)")
    ax.legend(fontsize=7)
    _integer_epochs(ax)
    return _save(fig, path)


def plot_collapse(collapse: list[dict], path: Path) -> Path | None:
    if not collapse:
        return None
    plt = _plt()
    pts = sorted(collapse, key=lambda c: c["epoch"])
    ep = [c["epoch"] for c in pts]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(ep, [c["embedding_std"] for c in pts], "o-")
    dim = pts[-1]["dim"]
    a.axhline(1 / math.sqrt(dim), ls="--", color="gray", label=f"1/sqrt(d), d={dim}")
    a.set_ylim(bottom=0)
    a.set_xlabel("epoch (checkpoints; 0 = random init)")
    a.set_ylabel("std of centred, L2-normalized features", fontsize=8)
    a.legend(fontsize=7)
    b.plot(ep, [c["effective_rank"] for c in pts], "o-", color="tab:red")
    b.set_ylim(bottom=0)
    b.set_xlabel("epoch (checkpoints; 0 = random init)")
    b.set_ylabel("effective rank")
    _integer_epochs(a, b)
    return _save(fig, path)


def plot_logged_collapse(records: list[dict], path: Path) -> Path | None:
    keys = [k for k in ("collapse_std", "effective_rank") if _series(records, k, "step")[1]]
    if not keys:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.2), squeeze=False)
    for ax, k in zip(axes[0], keys):
        ax.plot(*_series(records, k, "step"), lw=1)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(k)
    return _save(fig, path)


def plot_nmi(records: list[dict], path: Path) -> Path | None:
    keys = sorted({k for r in records for k in r if k.startswith("nmi") and isinstance(r[k], (int, float))})
    if not keys:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for k in keys:
        ax.plot(*_by_epoch(records, k), "o-", ms=3, label=k)
    ax.set_xlabel("epoch")
    ax.set_ylabel("NMI")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title(NMI_NOTE, fontsize=7)
    _integer_epochs(ax)
    return _save(fig, path)


def plot_embedding_map(xy: np.ndarray | None, labels: np.ndarray | None, class_names: list[str],
                       path: Path) -> Path | None:
    if xy is None or len(xy) == 0:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 5))
    if labels is None or (labels < 0).all():
        ax.scatter(xy[:, 0], xy[:, 1], s=4)
    else:
        classes = np.unique(labels)
        cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        for i, c in enumerate(classes):
            m = labels == c
            name = class_names[c] if 0 <= c < len(class_names) else str(c)
            ax.scatter(xy[m, 0], xy[m, 1], s=4, color=cmap(i % cmap.N), label=name)
        if len(classes) <= 20:
            ax.legend(fontsize=6, markerscale=3, loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"t-SNE of {len(xy)} test embeddings", fontsize=9)
    return _save(fig, path)


def plot_retrieval(retrieval, path: Path) -> Path | None:
    if retrieval is None:
        return None
    q, qy, nb, nby = retrieval
    rows, k = nb.shape[0], nb.shape[1]
    plt = _plt()
    fig, axes = plt.subplots(rows, k + 1, figsize=(1.1 * (k + 1), 1.15 * rows), squeeze=False)
    for r in range(rows):
        _tile(axes[r][0], q[r], f"query ({int(qy[r])})" if r == 0 else f"({int(qy[r])})", "tab:blue")
        for j in range(k):
            labelled = int(qy[r]) >= 0 and int(nby[r, j]) >= 0
            color = ("tab:green" if int(nby[r, j]) == int(qy[r]) else "tab:red") if labelled else None
            title = (f"nn {j + 1} ({int(nby[r, j])})" if r == 0 else f"({int(nby[r, j])})")
            _tile(axes[r][j + 1], nb[r, j], title, color)
    fig.suptitle("nearest training images by cosine similarity (green: same label)", fontsize=8)
    return _save(fig, path)


def plot_clusters(clusters: list[tuple[int, int, Tensor]], path: Path) -> Path | None:
    if not clusters:
        return None
    cols = max(len(c[2]) for c in clusters)
    plt = _plt()
    fig, axes = plt.subplots(len(clusters), cols, figsize=(1.0 * cols, 1.05 * len(clusters)), squeeze=False)
    for r, (cid, size, imgs) in enumerate(clusters):
        for j in range(cols):
            ax = axes[r][j]
            if j < len(imgs):
                _tile(ax, imgs[j])
            else:
                ax.axis("off")
        axes[r][0].set_ylabel(f"#{cid}\n(n={size})", fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle("random training images per cluster (largest clusters)", fontsize=8)
    return _save(fig, path)


def plot_preview(preview, path: Path) -> Path | None:
    if preview is None:
        return None
    from selfsup.viz.preview import preview_grid

    images, recipe = preview
    return preview_grid(images, recipe, path, seed=0, index=torch.arange(len(images)))


def _img(path: Path | None, alt: str) -> str:
    if path is None:
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _section(title: str, body: str, missing: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>{body or f'<p class=missing>{html.escape(missing)}</p>'}</section>"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
img{max-width:100%;display:block;margin:.5em 0}table{border-collapse:collapse;font-size:.9em}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}.missing{color:#777;font-style:italic}
.note{color:#555;font-size:.9em}"""


def write_report(run_dir: str | Path, data: ReportData) -> Path:
    """Draw every available plot into ``<run>/plots/`` and write ``<run>/report.html``."""
    run_dir = Path(run_dir)
    plots = run_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    p = {
        "loss": plot_loss_lr(data.records, plots / "loss_lr.png"),
        "knn": plot_knn(data.records, plots / "knn.png"),
        "collapse": plot_collapse(data.collapse, plots / "collapse.png"),
        "collapse_logged": plot_logged_collapse(data.records, plots / "collapse_logged.png"),
        "map": plot_embedding_map(data.embedding_2d, data.embedding_labels, data.class_names,
                                  plots / "embedding_tsne.png"),
        "retrieval": plot_retrieval(data.retrieval, plots / "retrieval.png"),
        "views": plot_preview(data.preview, plots / "views.png"),
        "clusters": plot_clusters(data.clusters, plots / "clusters.png"),
        "nmi": plot_nmi(data.records, plots / "nmi.png"),
    }
    metrics_rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{'-' if v is None else f'{v:.2f}'}</td></tr>"
                           for k, v in data.metrics_table.items())
    collapse_rows = "".join(
        f"<tr><td>{_fmt(c['label'])}</td><td>{_fmt(c['embedding_std'])}</td><td>{_fmt(c['effective_rank'])}</td>"
        f"<td>{c['dim']}</td></tr>" for c in sorted(data.collapse, key=lambda c: c["epoch"]))
    config_rows = "".join(
        f"<tr><th>{html.escape(sec)}</th><td>{', '.join(f'{html.escape(str(k))}={_fmt(v)}' for k, v in vals.items())}"
        f"</td></tr>" if isinstance(vals, dict) else f"<tr><th>{html.escape(sec)}</th><td>{_fmt(vals)}</td></tr>"
        for sec, vals in data.config.items())
    sections = [
        _section("Evaluation results", f"<table><tr><th>metric</th><th>value</th></tr>{metrics_rows}</table>"
                 f"<p class=note>Accuracies in %; clustering scores x100. {NMI_NOTE}</p>" if metrics_rows else "",
                 "no evaluation yet: run `selfsup eval all RUN`"),
        _section("Training loss and learning rate", _img(p["loss"], "loss and lr"), "no training steps logged"),
        _section("Online kNN accuracy", _img(p["knn"], "online kNN"), "no online kNN in metrics.jsonl "
                 "(the data set has no labelled test split)"),
        _section("Collapse indicators", (
            _img(p["collapse"], "collapse indicators")
            + (f"<table><tr><th>encoder</th><th>std of centred, L2-normalized features</th><th>effective rank</th>"
               f"<th>dim</th></tr>{collapse_rows}</table>" if collapse_rows else "")
            + "<p class=note>Measured on backbone features of test images at each kept checkpoint. Std: Chen &amp; "
              "He 2021 (SimSiam), about 1/sqrt(d) when healthy, 0 when collapsed; the features are centred first "
              "because post-ReLU features are all non-negative (SimSiam measures zero-mean projector outputs). "
              "Effective rank: Roy &amp; Vetterli 2007, exp of the entropy of the normalized singular values "
              "(uncentred); a low value with a healthy std means dimensional collapse.</p>"
            + (_img(p["collapse_logged"], "collapse indicators logged during training") or "")
            if p["collapse"] or p["collapse_logged"] else ""), "no checkpoint could be measured"),
        _section("Embedding map", _img(p["map"], "t-SNE map"), "no embeddings"),
        _section("Nearest-neighbour retrieval", _img(p["retrieval"], "retrieval"), "no labelled images to query"),
        _section("View recipe", _img(p["views"], "views"), "no preview"),
        _section("Clusters", _img(p["clusters"], "clusters")
                 + (f"<p class=note>Assignments from the method's buffer <code>{html.escape(data.cluster_source)}"
                    f"</code>.</p>" if p["clusters"] else "")
                 + (_img(p["nmi"], "NMI") + f"<p class=note>{NMI_NOTE}</p>" if p["nmi"] else ""),
                 "this method keeps no cluster assignments and logs no NMI"),
        _section("Configuration", f"<table>{config_rows}</table>" if config_rows else "", "no config"),
    ]
    notes = "".join(f"<p class=note>{html.escape(n)}</p>" for n in data.notes)
    page = (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(data.title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>Run report: {html.escape(data.title)}</h1>{notes}"
            f"{''.join(sections)}</body></html>\n")
    out = run_dir / "report.html"
    out.write_text(page, encoding="utf-8")
    return out
