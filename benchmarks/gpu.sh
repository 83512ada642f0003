#!/usr/bin/env bash
# The GPU benchmark in one command: step throughput (SimCLR, BYOL, SwAV; fp32/bf16, NCHW/channels_last,
# eager/compiled), selfsup's input pipeline against a DataLoader + PIL one, and a budgeted SimCLR run
# scored by kNN. Writes benchmarks/results/gpu/gpu_bench.json and prints a Markdown table.
#
#   benchmarks/gpu.sh                        # on a GPU machine: under 9 minutes on one H100
#   benchmarks/gpu.sh --device cpu --smoke   # CI: tiny synthetic data, a few seconds
#   benchmarks/gpu.sh --help                 # every option
#
# Paths of its defaults (data, output) are taken relative to the repository root, wherever this
# is started from; PYTHON chooses the interpreter (default: python, else python3).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
exec "$PYTHON" "$ROOT/benchmarks/gpu_bench.py" "$@"
