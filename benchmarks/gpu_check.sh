#!/usr/bin/env bash
# Every benchmark and check of intrakd on one CUDA GPU, in under 7 minutes (see benchmarks/README.md).
#
#   benchmarks/gpu_check.sh [OUT_DIR]          # OUT_DIR defaults to $OUT, else runs/gpu_check
#
# Writes to OUT_DIR: gpu_check.log (the GPU, every table and verdict, each part's exit status and
# time) and step_checks.json, overhead.json, input_pipeline.json, loop_vs_reference.json (eager),
# teacher_store.json (KD steps with a store of the teacher's outputs vs the live teacher), teacher_cost.json
# (the teacher's share of a KD step, its forward under no_grad vs inference_mode) and
# loop_compiled.json (eager and compiled with CUDA graphs, compile_mode=reduce-overhead, measured again
# side by side after compiling).
# CIFAR-100 is read from $INTRAKD_DATA_ROOT or the usual places; without it the benchmarks use
# random CIFAR-shaped images (throughput does not depend on pixel values) and say so.
# Each part has its own time limit; a part that fails or runs out of time does not stop the others,
# and the script exits non-zero if any did. PYTHON picks the interpreter (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-runs/gpu_check}}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
log="$out/gpu_check.log"
: > "$log"
start=$SECONDS
failed=()

part() {  # part NAME LIMIT_SECONDS SCRIPT [ARGS...]
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit} s; at $((SECONDS - start)) s)" | tee -a "$log"
    timeout --kill-after=10 "$limit" "$py" "$@" --json "$out/$name.json" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc at $((SECONDS - start)) s" | tee -a "$log"
    [ "$rc" -eq 0 ] || failed+=("$name(exit $rc)")
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    "$py" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'GPU', torch.cuda.get_device_name())"
} 2>&1 | tee -a "$log"

part step_checks 45 benchmarks/step_checks.py --full-step-model ''
part overhead 40 benchmarks/overhead.py --batch-sizes 64 256 --repeats 5 --steps 20 --warmup 10
part input_pipeline 30 benchmarks/input_pipeline.py --repeats 3 --steps 40 --warmup 20
part loop_vs_reference 35 benchmarks/loop_vs_reference.py --repeats 3 --steps 60 --warmup 30
part teacher_store 45 benchmarks/teacher_store.py --repeats 3 --steps 40 --warmup 20
part teacher_cost 45 benchmarks/teacher_cost.py --repeats 3 --steps 40 --warmup 20
part loop_compiled 130 benchmarks/loop_vs_reference.py --compile --perf compile_mode=reduce-overhead --repeats 3 --steps 60 --warmup 30

echo "=== total $((SECONDS - start)) s; failed: ${failed[*]:-none}" | tee -a "$log"
[ ${#failed[@]} -eq 0 ]
