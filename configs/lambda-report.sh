#!/usr/bin/env bash
# "Choosing lambda" in docs/results.md: intra.weight=auto against the best fixed lambda of a grid on
# four datasets (configs/cifar20-16px-lambda.yaml, configs/cifar10div-16px.yaml,
# configs/cifar20small-16px.yaml, configs/cifar100coarse-16px.yaml), from their runs:
#   configs/lambda-report.sh [RUNS_1 RUNS_2 RUNS_3 RUNS_4]   (default: the sweep files' out folders)
# Writes docs/results/lambda.json and docs/results/lambda.md, docs/results/cifar20small.{md,csv} (the third
# dataset's cells against its vanilla teacher) and docs/results/cifar100coarse.{md,csv} (the fourth
# dataset's cells against its CE-only student). Run from the repository root.
set -euo pipefail
python=${PYTHON:-python}
"$python" -m intrakd.analysis.lambda_choice \
    --dataset cifar20-16px configs/cifar20-16px-lambda.yaml ${1:-} \
    --dataset cifar10div-16px configs/cifar10div-16px.yaml ${2:-} \
    --dataset cifar20small-16px configs/cifar20small-16px.yaml ${3:-} \
    --dataset cifar100coarse-16px configs/cifar100coarse-16px.yaml ${4:-} \
    --out docs/results/lambda
"${INTRAKD:-intrakd}" report "${3:-/work/experiments/cifar20small-16px}" --metrics test_acc val_acc train_acc last_pass_rate \
    --compare test_acc --out docs/results/cifar20small \
    --title "cifar20small-16px (configs/cifar20small-16px.yaml): every cell against the vanilla teacher (test split)"
