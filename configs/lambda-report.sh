#!/usr/bin/env bash
# "Choosing lambda" in docs/results.md: intra.weight=auto against the best fixed lambda of a grid on
# five datasets (configs/cifar20-16px-lambda.yaml, configs/cifar10div-16px.yaml,
# configs/cifar20small-16px.yaml, configs/cifar100coarse-16px.yaml, configs/cifar10small-fitted-16px.yaml),
# from their runs:
#   configs/lambda-report.sh [RUNS_1 ... RUNS_5]   (default: the sweep files' out folders)
# Writes docs/results/lambda.json and docs/results/lambda.md, and the cells of datasets 3 and 5 against
# their vanilla teacher: docs/results/cifar20small.{md,csv}, docs/results/cifar10small-fitted.{md,csv}.
# Run from the repository root.
set -euo pipefail
python=${PYTHON:-python}
"$python" -m experiments.lambda_choice \
    --dataset cifar20-16px configs/cifar20-16px-lambda.yaml ${1:-} \
    --dataset cifar10div-16px configs/cifar10div-16px.yaml ${2:-} \
    --dataset cifar20small-16px configs/cifar20small-16px.yaml ${3:-} \
    --dataset cifar100coarse-16px configs/cifar100coarse-16px.yaml ${4:-} \
    --dataset cifar10small-fitted-16px configs/cifar10small-fitted-16px.yaml ${5:-} \
    --out docs/results/lambda
"${INTRAKD:-intrakd}" report "${3:-/work/experiments/cifar20small-16px}" --metrics test_acc val_acc train_acc last_pass_rate \
    --compare test_acc --out docs/results/cifar20small \
    --title "cifar20small-16px (configs/cifar20small-16px.yaml): every cell against the vanilla teacher (test split)"
"${INTRAKD:-intrakd}" report "${5:-/work/experiments/cifar10small-fitted-16px}" \
    --metrics test_acc val_acc train_acc last_pass_rate train_soft_off_target_mass train_soft_entropy \
    --compare test_acc train_soft_off_target_mass --out docs/results/cifar10small-fitted \
    --title "cifar10small-fitted-16px (configs/cifar10small-fitted-16px.yaml): every cell against the vanilla teacher"
