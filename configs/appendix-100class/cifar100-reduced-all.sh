#!/usr/bin/env bash
# Every table of docs/results/appendix-100class/results.md in one go: the sweeps in order, each skipping the runs already
# finished, so rerunning this script continues after an interruption. The enriched configuration of
# table 1 (cifar100-reduced-main.yaml) is the delta chosen on the validation split in table 2.
#   configs/appendix-100class/cifar100-reduced-all.sh [OUT]        (default OUT: /work/experiments/cifar100-reduced)
# Run from the repository root with intrakd installed (or PYTHONPATH=src and INTRAKD="python -m intrakd").
set -euo pipefail
out="${1:-/work/experiments/cifar100-reduced}"
intrakd=(${INTRAKD:-intrakd})
for table in delta main lambda cache; do
    "${intrakd[@]}" sweep "configs/appendix-100class/cifar100-reduced-$table.yaml" --out "$out"
done
"${intrakd[@]}" sweep configs/appendix-100class/cifar100-reduced-cost.yaml --out "$out-cost"
