"""benchmarks/gpu_data.py (the dataset in checked parts) and benchmarks/gpu_evidence.sh (its CPU dry run)."""

import hashlib
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_data  # benchmarks/ is not a package: imported from its folder


def fake_cifar100(root: Path, per_class: int = 16, classes: int = 4) -> Path:
    """A tiny dataset in the official cifar-100-python layout, with a SHA256SUMS file; returns its folder."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", per_class // 2)):
        fine = np.repeat(np.arange(classes), n)
        entry = {"data": rng.integers(0, 256, (fine.size, 3072), dtype=np.uint8), "fine_labels": fine.tolist(),
                 "coarse_labels": (fine // 2).tolist()}
        (folder / split).write_bytes(pickle.dumps(entry))
    meta = {"fine_label_names": [f"class{i}" for i in range(classes)],
            "coarse_label_names": [f"super{i}" for i in range((classes + 1) // 2)]}
    (folder / "meta").write_bytes(pickle.dumps(meta))
    sums = "".join(f"{hashlib.sha256((folder / n).read_bytes()).hexdigest()}  {n}\n" for n in ("meta", "test", "train"))
    (folder / "SHA256SUMS").write_text(sums)
    return folder


def test_pack_unpack_round_trip_and_refusals(tmp_path):
    source = fake_cifar100(tmp_path / "data")
    part_mb = 0.06
    parts = gpu_data.pack(tmp_path / "data", tmp_path / "parts", part_mb=part_mb)
    assert len(parts) >= 3  # random pixels do not compress: several parts
    assert all(p.stat().st_size <= part_mb * 2**20 for p in parts)

    target = gpu_data.unpack(tmp_path / "parts", tmp_path / "dest")
    assert target == tmp_path / "dest" / "cifar-100-python"
    assert sorted(p.name for p in target.iterdir()) == ["SHA256SUMS", "meta", "test", "train"]
    for name in ("SHA256SUMS", "meta", "test", "train"):
        assert (target / name).read_bytes() == (source / name).read_bytes()
    assert gpu_data.main(["check", str(tmp_path / "dest")]) == 0

    # a flipped byte in one payload: refused, nothing written
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for part in parts:
        (damaged / part.name).write_bytes(part.read_bytes())
    raw = bytearray((damaged / "part-001").read_bytes())
    raw[-10] ^= 0xFF
    (damaged / "part-001").write_bytes(bytes(raw))
    with pytest.raises(gpu_data.PartsError, match="part-001: payload damaged"):
        gpu_data.unpack(damaged, tmp_path / "dest2")
    assert gpu_data.main(["unpack", str(damaged), str(tmp_path / "dest2")]) == 1
    assert not (tmp_path / "dest2" / "cifar-100-python").exists()

    # a missing part: refused
    (damaged / "part-001").unlink()
    with pytest.raises(gpu_data.PartsError, match=r"missing \[1\]"):
        gpu_data.unpack(damaged, tmp_path / "dest2")

    # a file that no longer matches SHA256SUMS: neither packed nor passed by check
    (source / "test").write_bytes((source / "test").read_bytes()[:-1] + b"\0")
    with pytest.raises(gpu_data.PartsError, match="test: sha256"):
        gpu_data.pack(tmp_path / "data", tmp_path / "parts2")
    (target / "meta").write_bytes(b"not meta")
    assert gpu_data.main(["check", str(target)]) == 1


def test_unpack_refuses_files_that_differ_from_sha256sums(tmp_path, monkeypatch):
    """Parts whose own checksums agree but whose content differs from SHA256SUMS (damaged before packing)."""
    source = fake_cifar100(tmp_path / "data")
    sums = (source / "SHA256SUMS").read_text()
    meta_digest = hashlib.sha256((source / "meta").read_bytes()).hexdigest()
    (source / "SHA256SUMS").write_text(sums.replace(meta_digest, "0" * 64))
    monkeypatch.setattr(gpu_data, "check_files", lambda folder, sums: None)  # pack without its own check ...
    gpu_data.pack(tmp_path / "data", tmp_path / "parts")
    monkeypatch.undo()
    with pytest.raises(gpu_data.PartsError, match="meta: sha256"):  # ... unpack still checks every file
        gpu_data.unpack(tmp_path / "parts", tmp_path / "dest")
    assert not (tmp_path / "dest" / "cifar-100-python").exists()


def _script(args: list[str], tmp_path: Path, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "RUNS": str(tmp_path / "runs"), "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_evidence.sh"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.slow
def test_gpu_evidence_dry_run(tmp_path):
    """The whole pipeline on the CPU: parts unpacked and checked, the reference loop, 2 seeds x (vanilla,
    enriched) teacher + KD student at once, the report and the final table."""
    fake_cifar100(tmp_path / "data")
    gpu_data.pack(tmp_path / "data", tmp_path / "keep" / "parts", part_mb=0.1)
    out = tmp_path / "out"
    # about a minute on an idle 2-core machine; the budget is a bound for a loaded one (python start-up alone
    # took minutes there with several processes at once)
    done = _script([str(out), "--parts", str(tmp_path / "keep" / "parts"), "--dry-run", "--budget", "1500"],
                   tmp_path, timeout=1600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert (tmp_path / "keep" / "data" / "cifar-100-python" / "train").is_file()

    names = sorted(p.name for p in (out / "runs").iterdir())
    assert names == sorted(f"{kind}-{variant}-seed{seed}" for kind in ("teacher", "student")
                           for variant in ("vanilla", "enriched") for seed in (0, 1))
    for name in names:
        summary = json.loads((out / "runs" / name / "summary.json").read_text())
        assert summary["epochs"] == 1 and summary["eval_split"] == "test"
    config = (out / "runs" / "teacher-enriched-seed1" / "config.yaml").read_text()
    assert "weight: 0.02" in config and "delta: 0.5" in config and "seed: 1" in config
    assert "weight: 0.0" in (out / "runs" / "teacher-vanilla-seed0" / "config.yaml").read_text()

    result = json.loads((out / "gpu_evidence.json").read_text())
    assert set(result["reference"]) == {"teacher", "kd"}
    assert all(r["steady_images_per_s"] > 0 and r["vs_reference"] > 0 for r in result["runs"])
    assert [(p["kind"], p["seeds"]) for p in result["paired"]] == [("teacher", [0, 1]), ("student", [0, 1])]
    assert (out / "report.md").is_file()
    log = (out / "gpu_evidence.log").read_text()
    assert "=== loop_vs_reference: exit 0" in log and "failed: none" in log
    assert "vs_reference" in done.stdout


def test_gpu_evidence_stops_at_its_budget(tmp_path):
    """The time guard: with no time left, nothing starts, the script ends within its budget and says so."""
    fake_cifar100(tmp_path / "data")
    start = time.monotonic()
    done = _script([str(tmp_path / "out"), "--data-root", str(tmp_path / "data"), "--dry-run", "--budget", "21"],
                   tmp_path, timeout=120)
    assert done.returncode != 0
    assert time.monotonic() - start < 21 + 15
    log = (tmp_path / "out" / "gpu_evidence.log").read_text()
    assert "not started" in log and "failed:" in log
