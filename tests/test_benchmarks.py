"""The benchmark scripts run end to end (tiny sizes; their figures are not checked here)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--device", "cpu", "--threads", "1", "--repeats", "1", "--steps", "2", "--warmup", "1"]


@pytest.mark.parametrize("script, args", [
    ("overhead.py", ["--models", "resnet8", "--batch-sizes", "16"]),
    ("input_pipeline.py", ["--models", "resnet8", "--batch-size", "16"]),
    ("loop_vs_reference.py", ["--teacher-models", "resnet8", "--batch-size", "16"]),
    ("teacher_store.py", ["--pairs", "resnet8:resnet8", "--batch-size", "16"]),
    ("teacher_cost.py", ["--pairs", "resnet8:resnet8", "--batch-size", "16"]),
])
def test_benchmark_runs_and_writes_json(script, args, tmp_path):
    out = tmp_path / "result.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *TINY, *args, "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    if script == "overhead.py":  # the method adds operations (kernel launches on a GPU), counted exactly
        assert result["results"][0]["method_ops"] > 0
