#!/usr/bin/env bash
# Vanilla vs enriched teachers and their KD students on the FULL CIFAR-100 training set, on one CUDA
# GPU (H100/H200 class) in under 10 minutes, with intrakd's own command line; several seeds at once.
#
#   benchmarks/gpu_evidence.sh OUT [--parts DIR | --data-root DIR] [--seeds N] [--epochs E]
#                              [--milestones A,B,C] [--budget SECONDS] [--no-compile] [--dry-run]
#
# What it runs (see benchmarks/README.md, "gpu_evidence.sh"):
# 1. the data: with --parts DIR, the parts written by `benchmarks/gpu_data.py pack` are joined,
#    decompressed and checked file by file against the dataset's SHA256SUMS into DIR/../data (kept
#    between runs; a folder already there is checked again instead); otherwise --data-root,
#    $INTRAKD_DATA_ROOT or the usual places, checked against their SHA256SUMS when there is one.
# 2. benchmarks/loop_vs_reference.py on the same models (resnet56 teacher, resnet56 -> resnet20 KD,
#    batch 64): the reference loop of the KD repositories (PIL + DataLoader, fp32), measured alone.
# 3. 2 x SEEDS chains at once on the one GPU, each its own process and seed: a teacher (`intrakd
#    train-teacher`, resnet56, two views; vanilla = intra.weight=0, enriched = METHOD.md's
#    intra.weight=0.02 intra.delta=0.5), then the KD student of that teacher (`intrakd distill`,
#    resnet20, KD's recipe). The recipe otherwise (SGD 0.05, batch 64, weight decay 5e-4), with
#    EPOCHS epochs and the lr steps of the 240-epoch recipe (150/180/210) scaled to them; evaluated on
#    the 10,000 test images. Speed: CUDA graphs (perf.compile=true perf.compile_mode=reduce-overhead),
#    bf16 autocast, channels-last, fused SGD. As each run ends, its summary.json, metrics.jsonl and
#    config.yaml are copied to OUT/runs/<teacher|student>-<variant>-seed<k>/ (also for a run stopped
#    by the time guard: its metrics so far, and no summary).
# 4. `intrakd report` of the finished runs (paired enriched - vanilla differences with 95% CIs) and
#    a table of each run's images/s beside the reference loop's (benchmarks/gpu_evidence_table.py).
#
# Time guard: everything ends by --budget seconds (default 540) after the start: each run gets
# `timeout` with the time left (teachers leave room for their students); a run stopped by it saves
# a checkpoint and exits 143. Defaults (3 seeds x 5 epochs): an ESTIMATE, not a measurement; see
# benchmarks/README.md for its basis.
#
# Writes to OUT: gpu_evidence.log (the GPU, every part's exit status and timing, the tables),
# loop_vs_reference.json, runs/*/, logs/*.log (each run's output), report.md/.csv, gpu_evidence.json.
# Run folders (with checkpoints) go to a new folder under $RUNS (default runs/gpu_evidence), not to OUT.
# PYTHON picks the interpreter (default python3); the sources are used from src/ (PYTHONPATH).
# --dry-run: the same pipeline on the CPU at tiny sizes (resnet8 -> resnet8, classes 0 and 1, 1 epoch,
# 2 seeds, batch 16, no compile), for tests/test_gpu_evidence.py.
#
# Getting CIFAR-100 (~180 MB) onto a machine that takes 64 MiB per transfer, from the repository root:
#   here:     PYTHONPATH=src python benchmarks/gpu_data.py pack /work/shared/data gpu_parts --part-mb 60
#   call k:   carry [gpu_parts/part-00k], command: mkdir -p .gpu_keep/parts && mv gpu_parts/part-00k .gpu_keep/parts/
#   last:     carry [gpu_parts/part-00n], command: mkdir -p .gpu_keep/parts && mv gpu_parts/part-00n .gpu_keep/parts/ &&
#             PYTHON=python3 benchmarks/gpu_evidence.sh "$OUT" --parts .gpu_keep/parts
# (gpu_parts/ and .gpu_keep/ are git-ignored: the device keeps ignored files between calls while it
# stays warm, so make the calls back to back.)
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

out=${OUT:-}
parts="" data_root="" seeds=3 epochs=5 milestones="" budget="" compile=true dry_run=false
while [ $# -gt 0 ]; do
    case $1 in
        --parts) parts=$2; shift ;;
        --data-root) data_root=$2; shift ;;
        --seeds) seeds=$2; shift ;;
        --epochs) epochs=$2; shift ;;
        --milestones) milestones=$2; shift ;;
        --budget) budget=$2; shift ;;
        --no-compile) compile=false ;;
        --dry-run) dry_run=true ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "gpu_evidence.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) out=$1 ;;
    esac
    shift
done
[ -n "$out" ] || { echo "gpu_evidence.sh: give OUT (or set \$OUT)" >&2; exit 2; }
mkdir -p "$out/runs" "$out/logs"
runs=${RUNS:-runs/gpu_evidence}/$(date +%Y%m%d-%H%M%S)  # a fresh folder each time: nothing is deleted
log="$out/gpu_evidence.log"
: > "$log"
start=$SECONDS
failed=()

say() { echo "$*" | tee -a "$log"; }
finish() { say "=== total $((SECONDS - start)) s; failed: ${failed[*]:-none}"; }

step() {  # step NAME LIMIT_SECONDS COMMAND [ARGS...]: one part, with its exit status and time in the log
    local name=$1 limit=$2 t0=$SECONDS
    shift 2
    local left=$((start + budget - SECONDS))
    if [ "$left" -lt 2 ]; then
        say "=== $name: not started (no time left)"
        failed+=("$name(not started)")
        return 1
    fi
    [ "$limit" -le "$left" ] || limit=$left  # never past the budget
    say "=== $name (limit ${limit} s; at $((SECONDS - start)) s)"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    say "=== $name: exit $rc after $((SECONDS - t0)) s (at $((SECONDS - start)) s)"
    [ "$rc" -eq 0 ] || failed+=("$name(exit $rc)")
    return "$rc"
}

# ---------------------------------------------------------------- settings
if $dry_run; then
    teacher=resnet8 student=resnet8 seeds=2 epochs=1 batch=16 compile=false post=${POST_LIMIT:-150}
    budget=${budget:-900}  # a loaded 2-core CPU: python start-up alone can take a minute
    common=(device=cpu perf.threads=1 data.dataset=cifar100 "data.classes=[0,1]" data.train_per_class=32
            data.eval_per_class=16 data.batch_size=16)
    reference=(--device cpu --threads 1 --teacher-models resnet8 --kd resnet8:resnet8 --batch-size 16
               --repeats 1 --steps 2 --warmup 1)
    reference_limit=240
else
    teacher=resnet56 student=resnet20 batch=64 post=${POST_LIMIT:-30}  # seconds for the report, for the table
    threads=$(( $(nproc) / (2 * seeds) ))
    common=(device=cuda "perf.threads=$((threads > 0 ? threads : 1))" data.dataset=cifar100 data.batch_size=$batch)
    reference=(--teacher-models "$teacher" --kd "$teacher:$student" --batch-size $batch --repeats 3 --steps 40
               --warmup 10)
    reference_limit=75
    budget=${budget:-540}
fi
deadline=$((start + budget - 2 * post))  # the runs end by then; the rest is for the report and the table
if $compile; then
    common+=(perf.compile=true perf.compile_mode=reduce-overhead)
fi
scaled() {  # scaled K: round(EPOCHS * K / 8), halves to even, at least 1 (intrakd.config.scaled_milestones)
    local n=$((epochs * $1)) q r
    q=$((n / 8)) r=$((n % 8))
    if [ $r -gt 4 ] || { [ $r -eq 4 ] && [ $((q % 2)) -eq 1 ]; }; then q=$((q + 1)); fi
    echo $((q > 1 ? q : 1))
}
[ -n "$milestones" ] || milestones="$(scaled 5),$(scaled 6),$(scaled 7)"  # 150, 180, 210 of 240
common+=(optim.epochs="$epochs" "optim.milestones=[$milestones]" checkpoint.keep_last=1)

{
    echo "gpu_evidence.sh: $teacher -> $student, seeds 0..$((seeds - 1)), $epochs epochs (lr x0.1 at $milestones),"\
         "batch $batch, compile $compile, budget $budget s, dry run $dry_run"
    if ! $dry_run; then
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    fi
    timeout $((budget < 60 ? budget : 60)) "$py" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda,
'GPU', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
} 2>&1 | tee -a "$log"

# ---------------------------------------------------------------- 1. data
if [ -n "$parts" ]; then
    data_root="$(dirname "$parts")/data"
    if compgen -G "$data_root/*/SHA256SUMS" > /dev/null; then  # unpacked before (unpack writes it whole or not at all)
        step data_check 120 "$py" benchmarks/gpu_data.py check "$data_root" || { finish; exit 1; }
    else
        step data_unpack 180 "$py" benchmarks/gpu_data.py unpack "$parts" "$data_root" || { finish; exit 1; }
    fi
else
    if [ -z "$data_root" ]; then
        for candidate in "${INTRAKD_DATA_ROOT:-}" shared/data ../shared/data /work/shared/data; do
            if [ -n "$candidate" ] && [ -f "$candidate/cifar-100-python/train" ]; then data_root=$candidate; break; fi
        done
    fi
    [ -n "$data_root" ] || { say "CIFAR-100 not found: give --parts or --data-root"; exit 2; }
    if compgen -G "$data_root/SHA256SUMS" > /dev/null || compgen -G "$data_root/*/SHA256SUMS" > /dev/null; then
        step data_check 120 "$py" benchmarks/gpu_data.py check "$data_root" || { finish; exit 1; }
    else
        say "=== data: $data_root has no SHA256SUMS; not checked"
    fi
fi
common+=("data.root=$data_root")

# ---------------------------------------------------------------- 2. the reference loop, alone
left=$((deadline - SECONDS))
step loop_vs_reference $((reference_limit < left ? reference_limit : (left > 1 ? left : 1))) "$py" benchmarks/loop_vs_reference.py "${reference[@]}" \
    --data-root "$data_root" --json "$out/loop_vs_reference.json"

# ---------------------------------------------------------------- 3. the runs, 2 x SEEDS chains at once
collect() {  # collect NAME RUN_DIR: the run's JSON files to OUT as soon as it ends
    local dest="$out/runs/$1"
    mkdir -p "$dest"
    for file in summary.json metrics.jsonl config.yaml; do
        [ -f "$2/$file" ] && cp "$2/$file" "$dest/"
    done
}

run_one() {  # run_one NAME RUN_DIR UNTIL INTRAKD_ARGS...: one intrakd run, stopped at UNTIL (seconds)
    local name=$1 dir=$2 until=$3 t0=$SECONDS
    shift 3
    local left=$((until - SECONDS))
    if [ "$left" -lt 15 ]; then
        say "=== $name: not started ($left s left)"
        failed+=("$name(not started)")
        return 1
    fi
    say "=== $name: started (limit $left s; at $((SECONDS - start)) s)"
    timeout --kill-after=15 "$left" "$py" -m intrakd "$@" --out "$dir" --overwrite > "$out/logs/$name.log" 2>&1
    local rc=$?
    collect "$name" "$dir"
    say "=== $name: exit $rc after $((SECONDS - t0)) s (at $((SECONDS - start)) s)"
    [ -f "$dir/summary.json" ]  # finished (a run stopped while exiting has its results all the same)
}

chain() {  # chain VARIANT SEED TEACHER_UNTIL: a teacher, then its KD student
    local variant=$1 seed=$2 teacher_until=$3 intra
    if [ "$variant" = vanilla ]; then intra=(intra.weight=0); else intra=(intra.weight=0.02 intra.delta=0.5); fi
    local tdir="$runs/teachers/$variant/seed$seed" sdir="$runs/students/$variant/seed$seed"
    run_one "teacher-$variant-seed$seed" "$tdir" "$teacher_until" train-teacher \
        model=$teacher views=2 seed="$seed" "${intra[@]}" "${common[@]}" || return 1
    run_one "student-$variant-seed$seed" "$sdir" "$deadline" distill --teacher "$tdir/checkpoints/last.pt" \
        model=$student seed="$seed" distill.method=kd "${common[@]}"
}

left=$((deadline - SECONDS))
teacher_until=$((deadline - (left * 35 / 100 > 60 ? left * 35 / 100 : 60)))  # keep >= 35% for the students
say "=== runs: $((2 * seeds)) chains at once (teachers stop by $((teacher_until - start)) s, everything by $((deadline - start)) s)"
pids=() names=()
for seed in $(seq 0 $((seeds - 1))); do
    for variant in vanilla enriched; do
        chain "$variant" "$seed" "$teacher_until" &
        pids+=($!) names+=("$variant-seed$seed")
    done
done
for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || failed+=("chain-${names[$i]}")
done
say "=== runs: all ended at $((SECONDS - start)) s"

# ---------------------------------------------------------------- 4. report and table
finished=()
for kind in teachers students; do
    compgen -G "$runs/$kind/*/seed*/summary.json" > /dev/null && finished+=("$runs/$kind")
done
if [ ${#finished[@]} -gt 0 ]; then
    step report "$post" "$py" -m intrakd report "${finished[@]}" --out "$out/report" \
        --title "gpu_evidence: $teacher -> $student, $epochs epochs, $($dry_run && echo 'CPU dry run' || echo 'full CIFAR-100')" || true
fi
step table "$post" "$py" benchmarks/gpu_evidence_table.py "$out" --json "$out/gpu_evidence.json"

finish
[ ${#failed[@]} -eq 0 ]
