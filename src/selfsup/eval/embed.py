"""Writing a data set's embeddings to disk: features, labels and data set indices.

Formats, chosen by the output's suffix:

- ``.npy``: the features (N, D) float32 in that file, and ``index`` and ``labels`` (int64, -1
  for unlabelled images) in a sibling ``<stem>.meta.npz``;
- ``.npz``: one file with the arrays ``features``, ``index`` and ``labels``;
- ``.parquet``: one row per image with columns ``index``, ``label`` and ``features`` (a list of
  floats); needs ``pyarrow``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor

from selfsup.errors import SelfSupError

FORMATS = (".npy", ".npz", ".parquet")


def save_embeddings(path: str | Path, features: Tensor, labels: Tensor, index: Tensor | None = None) -> list[Path]:
    """Write the embeddings to ``path`` (format from its suffix); return the files written."""
    path = Path(path)
    f = features.detach().float().cpu().numpy()
    y = labels.detach().long().cpu().numpy()
    i = np.arange(len(f), dtype=np.int64) if index is None else index.detach().long().cpu().numpy()
    if not len(f) == len(y) == len(i):
        raise SelfSupError(f"embeddings: {len(f)} features, {len(y)} labels and {len(i)} indices must match")
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        meta = path.with_name(f"{path.stem}.meta.npz")
        np.save(path, f)
        np.savez(meta, index=i, labels=y)
        return [path, meta]
    if suffix == ".npz":
        np.savez(path, features=f, index=i, labels=y)
        return [path]
    if suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise SelfSupError("writing .parquet needs pyarrow (pip install pyarrow); or use .npy / .npz") from None
        table = pa.table({"index": i, "label": y, "features": pa.array(list(f), type=pa.list_(pa.float32()))})
        pq.write_table(table, path)
        return [path]
    raise SelfSupError(f"embeddings: unknown output format {path.suffix!r}; use one of {', '.join(FORMATS)}")
