"""Atomic, checksummed checkpoints: truncation and corruption found on load, full disks survived,
the last N and the best kept."""

from __future__ import annotations

import argparse
import errno
import hashlib
import os
import random
from pathlib import Path

import pytest
import torch
from fakes import FullDisk

import intrakd.models.checkpoint as checkpoint_module
from intrakd.models.checkpoint import (
    CheckpointError,
    CheckpointStore,
    CheckpointWriteError,
    read_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)


def state(value: float) -> dict:
    return {"model": {"w": torch.full((64, 64), value), "b": torch.arange(10.0)}, "epoch": int(value)}


def snapshot(folder: Path) -> dict[str, tuple[bool, bytes]]:
    """Every entry of a folder: (is a link, bytes or link target)."""
    return {p.name: (p.is_symlink(), os.readlink(p).encode() if p.is_symlink() else p.read_bytes())
            for p in sorted(folder.iterdir())}


def test_checkpoint_and_checksum_in_sha256sum_format(tmp_path):
    path = tmp_path / "a.pt"
    digest = save_checkpoint(state(1.0), path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (tmp_path / "a.pt.sha256").read_text() == f"{digest}  a.pt\n"
    assert verify_checkpoint(path) is True
    loaded = read_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], state(1.0)["model"]["w"]) and loaded["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "a.pt.sha256"]  # no temporary left


@pytest.fixture
def store(tmp_path) -> CheckpointStore:
    """Three checkpoints, the first the best."""
    store = CheckpointStore(tmp_path / "checkpoints", keep_last=3)
    store.save(state(1.0), 1, 0, best=True)
    store.save(state(2.0), 1, 5)
    store.save(state(3.0), 2, 0)
    return store


def test_truncated_checkpoint_at_random_lengths_is_detected_and_the_previous_named(store):
    newest = store.folder / "ckpt-e0002-s000000.pt"
    previous = store.folder / "ckpt-e0001-s000005.pt"
    intact = newest.read_bytes()
    rng = random.Random(7)
    for length in [0, 1, len(intact) - 1, *rng.sample(range(2, len(intact) - 1), 5)]:
        newest.write_bytes(intact[:length])
        for path in (newest, store.folder / "last.pt"):
            with pytest.raises(CheckpointError) as err:
                read_checkpoint(path)
            assert str(err.value).startswith(f"checkpoint {path} is corrupt: its sha256")
            assert "truncated or damaged" in str(err.value)
            assert str(err.value).endswith(f"; the previous intact checkpoint is {previous}")
        found = list(store.newest_intact())
        assert found[0][0] == newest and found[0][1] is None and "is corrupt" in found[0][2]
        assert found[1][0] == previous and found[1][1]["epoch"] == 2


def test_truncated_file_without_checksum_is_reported_as_unreadable(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save(state(1.0), path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match=r"checkpoint .*foreign.pt cannot be read .*it may be truncated"):
        read_checkpoint(path)
    assert verify_checkpoint(path) is False  # nothing to check it against


def test_a_file_of_other_objects_is_refused_in_one_short_line(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"model": {}, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    message = str(err.value)
    assert "Unsupported global: GLOBAL argparse.Namespace; only tensors and plain data are loaded" in message
    assert "\n" not in message and "weights_only` set to `False`" not in message


def test_flipped_byte_and_damaged_checksum_file_are_detected(store):
    newest = store.folder / "ckpt-e0002-s000000.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x01
    newest.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="is corrupt"):
        read_checkpoint(newest)
    sidecar = store.folder / "ckpt-e0001-s000005.pt.sha256"
    sidecar.write_text("not a checksum\n")
    with pytest.raises(CheckpointError, match="its checksum file .* is damaged"):
        read_checkpoint(store.folder / "ckpt-e0001-s000005.pt")


def test_keeps_the_last_n_and_the_best(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=2)
    store.save(state(1.0), 0, 3)
    store.save(state(2.0), 1, 0, best=True)
    for position in [(1, 3), (2, 0), (2, 3)]:
        store.save(state(float(sum(position))), *position)
    assert [p.name for _, p in store.history()] == ["ckpt-e0001-s000000.pt", "ckpt-e0002-s000000.pt",
                                                     "ckpt-e0002-s000003.pt"]
    assert os.readlink(tmp_path / "last.pt") == "ckpt-e0002-s000003.pt"
    assert os.readlink(tmp_path / "best.pt") == "ckpt-e0001-s000000.pt"
    assert read_checkpoint(tmp_path / "best.pt")["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".sha256")) == [
        "ckpt-e0001-s000000.pt.sha256", "ckpt-e0002-s000000.pt.sha256", "ckpt-e0002-s000003.pt.sha256"]


@pytest.mark.parametrize("room", [0, 1000, 200_000], ids=["no-room", "mid-checkpoint", "at-checksum"])
def test_full_disk_leaves_the_previous_checkpoint_and_no_temporary(store, monkeypatch, room):
    before = snapshot(store.folder)
    size = (store.folder / "ckpt-e0002-s000000.pt").stat().st_size
    disk = FullDisk(room if room < 200_000 else size)
    monkeypatch.setattr(checkpoint_module.os, "fdopen", disk)
    with pytest.raises(CheckpointWriteError) as err:
        store.save(state(4.0), 2, 5)
    assert err.value.errno == errno.ENOSPC
    # at-checksum: the whole checkpoint went out, its checksum did not
    assert disk.written == size if room == 200_000 else disk.written <= room
    assert str(err.value) == (f"[Errno {errno.ENOSPC}] cannot write checkpoint "
                              f"{store.folder / 'ckpt-e0002-s000005.pt'}: "
                              "No space left on device; nothing on disk was replaced")
    monkeypatch.undo()
    assert snapshot(store.folder) == before
    assert read_checkpoint(store.folder / "last.pt")["epoch"] == 3


def test_links_fall_back_to_verified_copies(tmp_path, monkeypatch):
    def no_links(*args, **kwargs):
        raise OSError(errno.EPERM, "symbolic links are not supported here")

    monkeypatch.setattr(checkpoint_module.os, "symlink", no_links)
    store = CheckpointStore(tmp_path, keep_last=1)
    store.save(state(1.0), 0, 5, best=True)
    store.save(state(2.0), 1, 0)
    last = tmp_path / "last.pt"
    assert not last.is_symlink() and last.read_bytes() == (tmp_path / "ckpt-e0001-s000000.pt").read_bytes()
    assert verify_checkpoint(last) and verify_checkpoint(tmp_path / "best.pt")
    assert read_checkpoint(tmp_path / "best.pt")["epoch"] == 1
    assert [p.name for _, p in store.history()] == ["ckpt-e0001-s000000.pt"]  # best is a copy: nothing to spare


def test_leftovers_of_an_interrupted_write_are_removed(store):
    (store.folder / ".ckpt-e0003-s000000.pt.123.abcd.tmp").write_bytes(b"partial")
    (store.folder / "ckpt-e0003-s000000.pt.sha256").write_text("0" * 64 + "  ckpt-e0003-s000000.pt\n")
    removed = store.remove_leftovers()
    assert sorted(p.name for p in removed) == [".ckpt-e0003-s000000.pt.123.abcd.tmp", "ckpt-e0003-s000000.pt.sha256"]
    assert [p.name for _, p in store.history()][-1] == "ckpt-e0002-s000000.pt"


def test_bare_state_dict_files_still_load(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"fc.weight": torch.ones(2, 3)}, path)
    assert torch.equal(read_checkpoint(path)["model"]["fc.weight"], torch.ones(2, 3))
