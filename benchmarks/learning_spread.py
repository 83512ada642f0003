"""How far each learning test's margin moves across seeds and oneDNN kernel choices.

A learning test trains a method briefly on the embedded digits and asserts that its kNN top-1 beats
the same backbone at random init by a required number of points. One machine reproduces a run bit
for bit; another CPU makes oneDNN choose other kernels, and the same seed then follows another
trajectory. This script runs every learning test (``pytest -m learning``) for each seed and each
``ONEDNN_MAX_CPU_ISA`` setting, collects the margins the tests log, and prints, per test, the
required margin beside the min / median / max measured one, so the required margins can be set with
room under all of them.

    python benchmarks/learning_spread.py                                 # seeds 0-2, ISAs default/AVX2/AVX512_CORE
    python benchmarks/learning_spread.py --seeds 0 1 --isas default AVX2 --jobs 2 -k "simclr or byol"
    python benchmarks/learning_spread.py --summarize benchmarks/results/learning_spread.jsonl

Each (seed, ISA) pair is one pytest process; ``--jobs`` of them run side by side (each test is
single-threaded, see tests/conftest.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_one(seed: int, isa: str, log: Path, keyword: str | None) -> tuple[int, str, int]:
    env = dict(os.environ, SELFSUP_LEARNING_SEED=str(seed), SELFSUP_MARGIN_LOG=str(log))
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    if isa != "default":
        env["ONEDNN_MAX_CPU_ISA"] = isa
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "learning", "-p", "no:cacheprovider"]
    if keyword:
        cmd += ["-k", keyword]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    # pytest's own report, for the failures that are not margins (the tests' other assertions)
    log.with_name(f"{log.stem}-seed{seed}-{isa}.txt").write_text(proc.stdout + proc.stderr)
    return seed, isa, proc.returncode


def summarize(log: Path) -> str:
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    by_test: dict[str, list[dict]] = {}
    for r in records:
        by_test.setdefault(r["test"], []).append(r)
    seeds = sorted({r["seed"] for r in records})
    isas = sorted({r["isa"] for r in records})
    lines = [f"{len(records)} runs: seeds {seeds}, ISAs {isas}", "",
             "| test | required | min | median | max | worst run (seed, ISA) | runs | passed |",
             "|---|---:|---:|---:|---:|---|---:|---:|"]
    for test, rs in sorted(by_test.items()):
        margins = [r["margin"] for r in rs]
        worst = min(rs, key=lambda r: r["margin"])
        passed = sum(r["margin"] > r["required"] for r in rs)
        lines.append(f"| {test} | {rs[0]['required']:.1f} | {min(margins):.2f} | {statistics.median(margins):.2f} | "
                     f"{max(margins):.2f} | {worst['seed']}, {worst['isa']} | {len(rs)} | {passed} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--isas", nargs="+", default=["default", "AVX2", "AVX512_CORE"],
                   help="ONEDNN_MAX_CPU_ISA values; 'default' leaves it unset")
    p.add_argument("--jobs", type=int, default=2, help="pytest processes side by side")
    p.add_argument("-k", dest="keyword", help="pytest -k expression to run a part of the learning tests")
    p.add_argument("--log", type=Path, default=ROOT / "benchmarks" / "results" / "learning_spread.jsonl")
    p.add_argument("--summarize", type=Path, help="only print the table of an existing log")
    args = p.parse_args()
    if args.summarize:
        print(summarize(args.summarize))
        return
    args.log.parent.mkdir(parents=True, exist_ok=True)
    args.log.unlink(missing_ok=True)
    pairs = [(s, i) for s in args.seeds for i in args.isas]
    with ThreadPoolExecutor(args.jobs) as pool:
        for seed, isa, rc in pool.map(lambda si: run_one(*si, args.log, args.keyword), pairs):
            print(f"seed {seed}, ISA {isa}: pytest exit {rc}", flush=True)
    print(summarize(args.log))


if __name__ == "__main__":
    main()
