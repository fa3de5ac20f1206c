#!/usr/bin/env bash
# The tables of docs/results/appendix-100class/results.md from the runs of configs/appendix-100class/cifar100-reduced-all.sh, written as
# docs/results/appendix-100class/<table>.md and .csv (runs not finished yet are listed under each table, not counted).
#   configs/appendix-100class/cifar100-reduced-report.sh [OUT]     (default OUT: /work/experiments/cifar100-reduced)
set -uo pipefail
out="${1:-/work/experiments/cifar100-reduced}"
intrakd=(${INTRAKD:-intrakd})
t="$out/teachers" s="$out/students"
geometry=(intra_class_distance inter_class_distance intra_inter_ratio soft_entropy soft_off_target_mass)

# Table 1: vanilla vs enriched teacher (lambda 0.02, delta 0.5: the method's defaults), their students;
# accuracy on the test split, geometry and soft labels on the training split (where the method acts)
# and on the test split.
main=("$t/intra.weight=0" "$t/intra.weight=0.02,intra.delta=0.5" "$s/intra.weight=0" "$s/intra.weight=0.02,intra.delta=0.5")
"${intrakd[@]}" report "${main[@]}" --where intra.cache=true \
    --metrics test_acc test_ece train_acc last_pass_rate peak_images_per_s --compare test_acc test_ece \
    --title "Table 1: vanilla vs enriched teacher and their KD students (test split)" --out docs/results/appendix-100class/table1-main
"${intrakd[@]}" report "${main[@]}" --where intra.cache=true \
    --metrics "${geometry[@]/#/train_}" "${geometry[@]/#/test_}" --compare "${geometry[@]/#/train_}" "${geometry[@]/#/test_}" \
    --title "Table 1b: embedding geometry and soft labels (T = 4), training and test split" \
    --out docs/results/appendix-100class/table1b-geometry

# Tables 2-4: tuning on the validation split, seeds 0, 1, 2 (geometry on the training split).
ablation() {  # NAME TITLE RUN_DIR...
    local name=$1 title=$2
    shift 2
    "${intrakd[@]}" report "$@" --metrics val_acc train_intra_class_distance train_intra_inter_ratio \
        train_soft_entropy last_pass_rate peak_images_per_s --compare val_acc train_soft_entropy \
        --title "$title" --out "docs/results/appendix-100class/$name"
}
ablation table2-delta "Table 2: margin gate delta at lambda 0.02 (validation split, seeds 0, 1, 2)" \
    "$t/intra.weight=0" "$s/intra.weight=0" \
    "$t"/intra.weight=0.02,intra.delta=* "$s"/intra.weight=0.02,intra.delta=* --where intra.cache=true
ablation table3-lambda "Table 3: intra-class weight lambda at delta 0.5 (validation split, seeds 0, 1, 2)" \
    "$t/intra.weight=0" "$s/intra.weight=0" \
    "$t"/intra.weight=*,intra.delta=0.5 "$s"/intra.weight=*,intra.delta=0.5
ablation table4-cache "Table 4: per-class feature cache on and off (validation split, seeds 0, 1, 2)" \
    "$t/intra.weight=0" "$s/intra.weight=0" \
    "$t"/intra.weight=0.02,intra.delta=0.5* "$s"/intra.weight=0.02,intra.delta=0.5*

# Table 5: cost, from the short interleaved runs of configs/appendix-100class/cifar100-reduced-cost.yaml.
"${intrakd[@]}" report "$out-cost" --metrics images_per_s peak_images_per_s train_s \
    --compare images_per_s peak_images_per_s train_s \
    --title "Table 5: teacher training throughput, vanilla vs enriched (3 interleaved short runs each)" \
    --out docs/results/appendix-100class/table5-cost
