"""InstDisc's NCE scores two ways: gathering each sample's m noise rows, or one product with the
whole bank and a pick of the m scores out of it (``instdisc_nce_loss(dense=...)``, same loss).

The gathered copy is B m D floats (512 MB at the paper's B = 256, m = 4,096, D = 128) whatever
the bank's size; the product costs B N D multiply-adds and grows with the bank. This times the
loss's forward and backward both ways, interleaved in one process, for banks of growing size
N, and prints the ratio, which sets ``DENSE_BANK_FACTOR`` (the loss goes dense while N <= that
factor times m). One JSON line per N goes to benchmarks/results/nce_scores.jsonl.

    python benchmarks/nce_scores.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from throughput import cpu_name

from selfsup.losses import instdisc_nce_loss, nce_scores_dense

RESULTS = Path(__file__).parent / "results"


def step_seconds(features: torch.Tensor, memory: torch.Tensor, index: torch.Tensor, noise: torch.Tensor,
                 dense: bool) -> float:
    x = features.clone().requires_grad_()
    t = time.perf_counter()
    instdisc_nce_loss(x, memory, index, noise, 0.07, normalization_constant=None, dense=dense).backward()
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--noise", type=int, default=4096, help="m, noise draws per sample")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--banks", default="10000,50000,100000,200000,400000", help="bank sizes N")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=RESULTS / "nce_scores.jsonl")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    features = torch.randn(args.batch_size, args.dim, generator=g)
    rows = []
    for n in (int(v) for v in args.banks.split(",")):
        memory = F.normalize(torch.randn(n, args.dim, generator=g), dim=1)
        index = torch.randint(0, n, (args.batch_size,), generator=g)
        noise = torch.randint(0, n, (args.batch_size, args.noise), generator=g)
        times = {True: [], False: []}
        for r in range(args.rounds + 1):  # the first round warms up and is dropped
            for dense in (False, True):
                s = step_seconds(features, memory, index, noise, dense)
                if r:
                    times[dense].append(s)
        gathered, dense = statistics.median(times[False]), statistics.median(times[True])
        row = {"bank": n, "noise": args.noise, "batch_size": args.batch_size, "dim": args.dim,
               "gathered_ms": round(gathered * 1e3, 1), "dense_ms": round(dense * 1e3, 1),
               "gathered_over_dense": round(gathered / dense, 2),
               "dense_by_default": nce_scores_dense(n, args.noise),
               "machine": f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
               "date": time.strftime("%Y-%m-%d")}
        rows.append(row)
        print(json.dumps(row))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    print("\n| bank N | N / m | gathered ms | dense ms | gathered / dense | dense by default |")
    print("|---:|---:|---:|---:|---:|:---:|")
    for r in rows:
        print(f"| {r['bank']:,} | {r['bank'] / r['noise']:.1f} | {r['gathered_ms']} | {r['dense_ms']} | "
              f"{r['gathered_over_dense']} | {'yes' if r['dense_by_default'] else 'no'} |")


if __name__ == "__main__":
    main()
