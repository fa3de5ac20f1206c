#!/usr/bin/env bash
# "Choosing lambda" in docs/results.md: intra.weight=auto against the best fixed lambda of a grid on
# three datasets (configs/cifar20-16px-lambda.yaml, configs/cifar10div-16px.yaml,
# configs/cifar20small-16px.yaml), from their runs:
#   configs/lambda-report.sh [RUNS_1 RUNS_2 RUNS_3]   (default: the sweep files' out folders)
# Writes docs/results/lambda.json and docs/results/lambda.md. Run from the repository root.
set -euo pipefail
python=${PYTHON:-python}
"$python" -m intrakd.analysis.lambda_choice \
    --dataset cifar20-16px configs/cifar20-16px-lambda.yaml ${1:-} \
    --dataset cifar10div-16px configs/cifar10div-16px.yaml ${2:-} \
    --dataset cifar20small-16px configs/cifar20small-16px.yaml ${3:-} \
    --out docs/results/lambda
