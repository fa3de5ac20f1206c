#!/usr/bin/env bash
# Every table of docs/results.md in one go: the sweeps in order (tuning tables first), each skipping
# the runs already finished, so rerunning this script continues after an interruption.
#   configs/cifar100-reduced-all.sh [OUT]        (default OUT: /work/experiments/cifar100-reduced)
# Run from the repository root with intrakd installed (or PYTHONPATH=src and INTRAKD="python -m intrakd").
set -euo pipefail
out="${1:-/work/experiments/cifar100-reduced}"
intrakd=(${INTRAKD:-intrakd})
for table in delta lambda cache main; do
    "${intrakd[@]}" sweep "configs/cifar100-reduced-$table.yaml" --out "$out"
done
"${intrakd[@]}" sweep configs/cifar100-reduced-cost.yaml --out "$out-cost"
