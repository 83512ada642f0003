"""Side-by-side comparison of runs: one text table and one grouped bar chart."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def comparison_table(rows: dict[str, dict[str, float | None]]) -> str:
    """A Markdown table: one row per run, one column per metric present in at least one run."""
    columns = [c for c in dict.fromkeys(k for r in rows.values() for k in r) if any(r.get(c) is not None
                                                                                   for r in rows.values())]
    head = "| run | " + " | ".join(columns) + " |"
    rule = "|---|" + "---|" * len(columns)
    body = ["| " + name + " | " + " | ".join("-" if r.get(c) is None else f"{r[c]:.2f}" for c in columns) + " |"
            for name, r in rows.items()]
    return "\n".join([head, rule, *body])


def comparison_chart(rows: dict[str, dict[str, float | None]], out: str | Path) -> Path | None:
    """Grouped bars (metrics on the x axis, one colour per run); None when nothing was evaluated."""
    columns = [c for c in dict.fromkeys(k for r in rows.values() for k in r) if any(r.get(c) is not None
                                                                                   for r in rows.values())]
    if not columns:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(columns))
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(columns)), 4))
    for i, (name, r) in enumerate(rows.items()):
        vals = [r.get(c) if r.get(c) is not None else 0.0 for c in columns]
        ax.bar(x + (i - (len(rows) - 1) / 2) * width, vals, width, label=name)
    ax.set_xticks(x)
    ax.set_xticklabels(columns, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (%) / score x100")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
