"""Unreadable images in folder datasets: listed all at once before anything is written (error), or
left out, named once and counted, with resume still exact (skip); a one-class dataset is refused."""

from __future__ import annotations

import io
import json
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_imagefolder import make_image_folders

from intrakd.cli import EXIT_BAD_INPUT, main
from intrakd.data import imagefolder
from intrakd.train import Trainer

TIMING = ("images_per_s", "train_seconds")


def folders(root: Path) -> list[Path]:
    """Two classes of 8 training images; two training files and one val file unreadable."""
    make_image_folders(root, per_class=8)
    noise = root / "train" / "cat" / "img2.JPEG"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    buffer = io.BytesIO()
    Image.fromarray(np.full((40, 40, 3), 120, np.uint8)).save(buffer, format="JPEG")
    cut = root / "train" / "dog" / "img4.JPEG"
    cut.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    val = root / "val" / "dog" / "img1.png"
    val.write_bytes(b"")
    return [noise, cut, val]


def args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["train-teacher", "--out", str(out), "data.dataset=imagefolder", f"data.root={root}", "data.workers=0",
            "data.image_size=16", "data.augment=pad_crop", "data.batch_size=4", "model=resnet8", "optim.epochs=2",
            "optim.milestones=[1]", "intra.weight=0.1", "device=cpu", *extra]


def records(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_every_unreadable_image_is_listed_in_one_message_before_anything_is_written(tmp_path, capsys):
    bad = folders(tmp_path / "data")
    out = tmp_path / "run"
    assert main(args(tmp_path / "data", out)) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"3 unreadable images in {tmp_path / 'data'}: " in err[0]
    assert all(str(path) in err[0] for path in bad) and "data.bad_images=skip" in err[0]
    assert not out.exists()


@pytest.mark.parametrize("scan_limit", [imagefolder.SCAN_LIMIT, 0], ids=["scanned", "found-while-reading"])
def test_skip_names_each_file_once_and_counts_them(tmp_path, capsys, monkeypatch, scan_limit):
    monkeypatch.setattr(imagefolder, "SCAN_LIMIT", scan_limit)
    bad = folders(tmp_path / "data")
    out = tmp_path / "run"
    assert main(args(tmp_path / "data", out, "data.bad_images=skip")) == 0
    err = capsys.readouterr().err
    for path in bad:
        assert err.count(f"warning: skipping unreadable image {path} (") == 1
    lines = records(out)
    assert all("skipped_images" in line for line in lines)
    if scan_limit:  # known from the start: every epoch counts the bad images its batches would have held
        assert [line["skipped_images"] for line in lines] == [2, 2]  # 16 images, 4 batches of 4: none dropped
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_images"] == 2


def test_skip_keeps_resume_exact(tmp_path, monkeypatch):
    folders(tmp_path / "data")
    reference = tmp_path / "reference"
    assert main(args(tmp_path / "data", reference, "data.bad_images=skip")) == 0
    run = tmp_path / "run"
    original = Trainer.train_step

    def step_then_ctrl_c(self, batch):
        original(self, batch)
        if self.state.global_step == 5:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(Trainer, "train_step", step_then_ctrl_c)
    assert main(args(tmp_path / "data", run, "data.bad_images=skip")) == 130
    monkeypatch.setattr(Trainer, "train_step", original)
    assert main(["train-teacher", "--resume", str(run)]) == 0
    assert records(run) == records(reference)
    summaries = [json.loads((r / "summary.json").read_text()) for r in (run, reference)]
    assert [s["final_acc"] for s in summaries] == [summaries[1]["final_acc"]] * 2


def test_a_run_stopped_by_an_image_gone_bad_in_epoch_2_resumes_with_skip(tmp_path, monkeypatch, capsys):
    root = tmp_path / "data"
    make_image_folders(root, per_class=8)
    run = tmp_path / "run"
    original = Trainer.train_step
    spoiled = root / "train" / "cat" / "img3.png"

    def spoil_after_epoch_1(self, batch):
        original(self, batch)
        if self.state.global_step == 3:  # the last step of epoch 1 (16 images, batches of 4)
            spoiled.write_bytes(b"not an image")

    monkeypatch.setattr(Trainer, "train_step", spoil_after_epoch_1)
    assert main(args(root, run)) == EXIT_BAD_INPUT
    assert f"cannot read image {spoiled}" in capsys.readouterr().err
    monkeypatch.setattr(Trainer, "train_step", original)
    assert main(["train-teacher", "--resume", str(run), "data.bad_images=skip"]) == 0
    assert f"warning: skipping unreadable image {spoiled}" in capsys.readouterr().err
    assert json.loads((run / "summary.json").read_text())["skipped_images"] == 1


def test_a_one_class_dataset_is_refused(tmp_path, capsys):
    make_image_folders(tmp_path / "data", classes=("cat",), per_class=8)
    assert main(args(tmp_path / "data", tmp_path / "run")) == EXIT_BAD_INPUT
    assert "holds one class folder (cat): a classifier needs at least two classes" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
