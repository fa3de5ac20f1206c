#!/usr/bin/env bash
# The tables and the headline of docs/results.md from the runs of configs/cifar20-16px-main.yaml
# (and of configs/cifar20-16px-ablations.yaml, when any has finished), all in one --out folder:
#   configs/cifar20-16px-report.sh [OUT]         (default OUT: /work/experiments/cifar20-16px)
# Writes docs/results/summary.json, docs/results/main.{md,csv} and docs/results/ablations.{md,csv}.
# Run from the repository root with intrakd installed (or INTRAKD="python -m intrakd"; PYTHON: the
# interpreter that runs experiments/, default python).
set -euo pipefail
out="${1:-/work/experiments/cifar20-16px}"
intrakd=(${INTRAKD:-intrakd})
python=${PYTHON:-python}
main=("$out/teachers/intra.weight=0" "$out/teachers/intra.weight=0.02" "$out/teachers/model=resnet8,views=1,intra.weight=0"
      "$out/students/intra.weight=0" "$out/students/intra.weight=0.02")
metrics=(test_acc train_acc test_intra_class_distance test_inter_class_distance test_intra_inter_ratio
         test_soft_entropy test_soft_off_target_mass test_ece last_pass_rate peak_images_per_s)
"${intrakd[@]}" report "${main[@]}" --metrics "${metrics[@]}" --compare test_acc test_soft_entropy \
    --title "Main comparison: vanilla vs enriched teacher, their KD students, the CE-only student (test split)" \
    --out docs/results/main
"$python" -m experiments.evidence "${main[@]}" --out docs/results/summary.json --protocol cifar20-16px
ablations=()
for cell in "$out"/teachers/intra.weight=0.02,* "$out"/teachers/intra.weight=0.01 "$out"/teachers/intra.weight=0.05 \
            "$out"/teachers/intra.weight=0.1 "$out"/teachers/intra.weight=0.2; do
    [ -d "$cell" ] && [ -d "$out/students/$(basename "$cell")" ] || continue
    name=$(basename "$cell")
    ablations+=("$cell" "$out/students/$name")
done
if [ ${#ablations[@]} -gt 0 ]; then
    "${intrakd[@]}" report "$out/teachers/intra.weight=0" "$out/teachers/intra.weight=0.02" \
        "$out/students/intra.weight=0" "$out/students/intra.weight=0.02" "${ablations[@]}" \
        --metrics test_acc train_acc test_soft_entropy last_pass_rate --compare test_acc \
        --title "Ablations (test split; differences from the vanilla teacher's group)" --out docs/results/ablations
fi
