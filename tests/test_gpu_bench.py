"""benchmarks/gpu.sh end to end in its CPU smoke mode: it runs, and reports every row it promises."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("simclr", "byol", "swav")


def _measured_or_skipped(row: dict) -> bool:
    if row.get("status") == "ok":
        return (row.get("images_per_s") or 0) > 0
    return row.get("status") == "skipped" and bool(row.get("skipped"))


def test_gpu_bench_smoke(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--device", "cpu", "--smoke",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=120, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    doc = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert doc["device_type"] == "cpu" and doc["torch"] and doc["date"] and doc["settings"]["smoke"]
    assert doc["data"]["source"].startswith("synthetic")  # smoke mode never reads ../shared
    rows = doc["rows"]

    steps = {(r["method"], r["precision"], r["channels_last"], r["compile"]): r for r in rows if r["kind"] == "step"}
    expected = {(m, p, cl, c) for m in METHODS for p in ("fp32", "bf16") for cl in (False, True)
                for c in (False, True)}
    assert set(steps) == expected
    for key, row in steps.items():
        assert _measured_or_skipped(row), (key, row)
        if not key[3]:  # eager rows are always measured
            assert row["status"] == "ok", (key, row)
    # torch.compile is skipped on a CPU in smoke mode, and says so.
    assert all(r["status"] == "skipped" and "compile" in r["skipped"] for k, r in steps.items() if k[3])

    pipelines = {r["pipeline"]: r for r in rows if r["kind"] == "pipeline"}
    assert set(pipelines) == {"selfsup", "peer"}
    for row in pipelines.values():
        assert row["status"] == "ok" and row["images_per_s"] > 0, row

    (train,) = [r for r in rows if r["kind"] == "train"]
    assert train["status"] == "ok", train
    assert train["epochs"] >= 1 and train["images_per_s"] > 0
    assert 0 <= train["knn_top1"] <= 100 and train["k"] == 200 and train["temperature"] == 0.1
    assert not (Path(train["run_dir"]) / "checkpoints").exists()

    # The Markdown table is printed (and saved), one line per row.
    out = proc.stdout
    assert "| benchmark | configuration | images/s |" in out
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(rows)
    assert "| train | simclr budgeted" in out and "| pipeline | simclr peer" in out
    assert "skipped: " in out
    assert (tmp_path / "gpu_bench.md").read_text().strip() in out
