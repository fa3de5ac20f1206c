"""A store of a teacher's outputs on the augmented views that student runs draw: the teacher runs
once, and every student of the same data settings and seed reads its logits instead of running it.

A store is a folder::

    settings.json      what the store holds and how it was made (teacher, data, seed, views, precision,
                       logits format, record layout); written first
    e0000-r0.bin       one shard per epoch and data-parallel rank: a memory-mapped array of records, one per
                       training image in the order the epoch visits them (this rank's rows of every batch):
                       the image's index in the split, the augmentation draws of each view (crop offsets,
                       flip; for strong views the RandAugment seed and Cutout's draws) and the teacher's
                       logits of each view (every class in the dtype the teacher computed them in, or the
                       top K in float16 and the log of the other classes' summed probability)
    e0000-r0.sha256    the shard's checksum, written once the shard is complete
    manifest.json      the settings, the epochs and every shard's checksum and size: written last, its
                       presence marks a complete store

Every file is written to a temporary name and renamed into place when complete: an interrupted writer
leaves only finished shards, and a writer started again with the same settings keeps them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from intrakd.config import ConfigError, DataConfig, flatten, to_dict
from intrakd.data.augment import ViewDraws
from intrakd.data.tensor_data import Batch, TensorBatches, TensorDataset
from intrakd.progress import Progress

STORE_FORMAT = 2
"""Version of the store layout."""
SETTINGS, MANIFEST = "settings.json", "manifest.json"
DATA_KEYS_IGNORED = ("root", "workers", "eval_batch_size", "eval_per_class", "bad_images")
"""Data settings that do not change the training views (where the data is, how it is read, the eval split)."""
LOGIT_DTYPES = {torch.float32: ("float32", "<f4"), torch.bfloat16: ("bfloat16", "<i2"),
                torch.float16: ("float16", "<f2")}
"""Torch dtype of the teacher's logits -> (name in the settings, numpy type of the stored bits)."""
TORCH_DTYPES = {name: dtype for dtype, (name, _) in LOGIT_DTYPES.items()}


class StoreMismatch(ConfigError):
    """A store that does not hold what a run needs (other data settings, seed, teacher, too few epochs)."""


def shard_name(epoch: int, rank: int) -> str:
    return f"e{epoch:04d}-r{rank}"


def tensor_sha256(*tensors: Tensor) -> str:
    """sha256 of the bytes of ``tensors`` (on the CPU, contiguous), in order."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(np.ascontiguousarray(tensor.detach().cpu().numpy()).data)
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    """sha256 hex digest of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _fsync(path: Path, directory: bool = False) -> None:
    if directory and not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp(path: Path) -> Path:
    return path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def _write_text(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` atomically (temporary file, flushed, renamed)."""
    tmp = _temp(path)
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent, directory=True)


def view_settings(data_cfg: DataConfig, data: TensorDataset, batches: TensorBatches) -> dict[str, Any]:
    """What decides the views a run draws and the images behind them: the data settings that shape the
    training split, a checksum of its images and labels, the augmentation, the seed, the batches."""
    aug = data.augmentation
    return {
        "data": {k: v for k, v in to_dict(data_cfg).items() if k not in DATA_KEYS_IGNORED},
        "train_images": len(data), "num_classes": data.num_classes, "image_shape": list(data.image_shape),
        "train_data_sha256": tensor_sha256(data.images, data.labels),
        "augmentation": {"mean": list(aug.mean), "std": list(aug.std), "padding": aug.padding, "flip": aug.flip},
        "seed": batches.seed, "world_size": batches.world_size, "steps_per_epoch": len(batches),
        "views": batches.views, "strong_views": batches.strong_views,
    }


def record_dtype(settings: dict[str, Any]) -> np.dtype:
    """The layout of one image's record in a shard of a store with these ``settings``."""
    views, strong, classes = settings["views"], settings["strong_views"], settings["num_classes"]
    aug, logits = settings["augmentation"], settings["logits"]
    fields: list[tuple[Any, ...]] = [("index", "<i8")]
    if aug["padding"]:
        fields.append(("crop", "<i2", (views, 2)))
    if aug["flip"]:
        fields.append(("flip", "u1", (views,)))
    if strong:
        fields += [("strong_seed", "<i8", (strong,)), ("cutout", "<f4", (strong, 3))]
    if logits["top_k"] is None:
        fields.append(("logits", dict(LOGIT_DTYPES.values())[logits["dtype"]], (views, classes)))
    else:
        k = logits["top_k"]
        fields += [("top_logits", "<f2", (views, k)), ("top_classes", "<i2" if classes < 2**15 else "<i4", (views, k)),
                   ("rest", "<f4", (views,))]
    return np.dtype(fields)


def views_served(store_views: int, store_strong: int, views: int, strong: int) -> bool:
    """Whether a store of ``store_views`` views (the last ``store_strong`` strong) holds the ``views`` views
    (the last ``strong`` strong) of a run: its first views, alike weak or strong. The draws of a batch's
    views come one view after the other from one generator, so a run's views are the first of a store's."""
    return views <= store_views and all((v >= views - strong) == (v >= store_views - store_strong)
                                        for v in range(views))


def compact_logits(logits: Tensor, top_k: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(top values fp16 [B, K], their classes [B, K], log of the other classes' summed exp [B])``."""
    values, classes = logits.float().topk(top_k, dim=1)
    rest = logits.float().scatter(1, classes, float("-inf")).logsumexp(dim=1)
    return values.half(), classes, rest


def expand_logits(values: Tensor, classes: Tensor, rest: Tensor, num_classes: int) -> Tensor:
    """Float32 ``[B, C]`` logits from a compact form: the top K as stored, every other class at the same
    value, ``rest - log(C - K)``, so that the softmax at temperature 1 keeps the top K's probabilities
    and the rest's total (FKD's soft labels)."""
    k = values.shape[1]
    fill = rest.float() - math.log(num_classes - k)
    full = fill[:, None].expand(-1, num_classes).clone()
    return full.scatter_(1, classes.long(), values.float())


class StoreWriter:
    """Writes the shards of a store in ``folder`` with ``settings``, keeping the finished shards of an
    earlier, interrupted writer of the same settings (or a complete store's, to extend it to more epochs)."""

    def __init__(self, folder: str | Path, settings: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.settings = {"format": STORE_FORMAT, **settings}
        self.dtype = record_dtype(self.settings)
        self.settings["record"] = self.dtype.descr
        self.settings = json.loads(json.dumps(self.settings))  # as read back from settings.json
        self.rows = settings["steps_per_epoch"] * self.rows_per_batch

    @property
    def rows_per_batch(self) -> int:
        return self.settings["data"]["batch_size"] // self.settings["world_size"]

    def check_folder(self) -> None:
        """Raise :class:`StoreMismatch` when ``folder`` holds anything but a store of these settings
        (any epochs): nothing is written then."""
        if self.folder.exists() and not self.folder.is_dir():
            raise NotADirectoryError(f"--out {self.folder} is a file: name a folder for the store")
        if not self.folder.is_dir() or not any(self.folder.iterdir()):
            return
        path = self.folder / SETTINGS
        if not path.is_file():
            raise FileExistsError(f"{self.folder} is not empty and holds no teacher-outputs store: "
                                  "choose another --out")
        found = json.loads(path.read_text())
        keys = sorted((set(flatten(found)) | set(flatten(self.settings))) - {"teacher.path"})
        differences = _differences(found, self.settings, keys)
        if differences:
            raise StoreMismatch(f"{self.folder} holds a store made with other settings ({'; '.join(differences)}): "
                                "choose another --out, or delete it to make it again")

    def start(self) -> None:
        """Create the folder and its settings file (the first writer of a new store), or continue a store
        of these settings, removing the temporary files of a writer that was killed."""
        self.check_folder()
        self.folder.mkdir(parents=True, exist_ok=True)
        for leftover in self.folder.glob(".*.tmp"):  # of a writer that was killed
            leftover.unlink()
        if not (self.folder / SETTINGS).is_file():
            _write_text(self.folder / SETTINGS, json.dumps(self.settings, indent=1) + "\n")

    def finished(self, epoch: int, rank: int) -> bool:
        """Whether the shard of ``(epoch, rank)`` is complete and intact (a damaged one is removed)."""
        name = shard_name(epoch, rank)
        data, digest = self.folder / f"{name}.bin", self.folder / f"{name}.sha256"
        if not (data.is_file() and digest.is_file()):
            return False
        if data.stat().st_size == self.rows * self.dtype.itemsize and file_digest(data) == digest.read_text().strip():
            return True
        data.unlink()
        digest.unlink()
        return False

    @contextlib.contextmanager
    def shard(self, epoch: int, rank: int) -> Iterator[np.memmap]:
        """A memory-mapped array of the shard's records to fill; renamed into place (with its checksum)
        when the block ends without error, removed otherwise."""
        name = shard_name(epoch, rank)
        final = self.folder / f"{name}.bin"
        tmp = _temp(final)
        try:
            records = np.memmap(tmp, self.dtype, mode="w+", shape=(self.rows,))
            yield records
            records.flush()
            del records
            _fsync(tmp)
            digest = file_digest(tmp)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _write_text(self.folder / f"{name}.sha256", digest + "\n")

    def put(self, records: np.ndarray, i: int, index: Tensor, draws: tuple[ViewDraws, ...],
            logits: tuple[Tensor, ...]) -> None:
        """Fill the records of batch ``i`` of a shard: the images' indices, every view's draws and logits."""
        rows = records[i * self.rows_per_batch : (i + 1) * self.rows_per_batch]
        rows["index"] = index.cpu().numpy()
        strong = [d for d in draws if d.strong_seed is not None]
        for v, d in enumerate(draws):
            if d.crop is not None:
                rows["crop"][:, v] = d.crop.cpu().numpy()
            if d.flip is not None:
                rows["flip"][:, v] = d.flip.cpu().numpy()
        for j, d in enumerate(strong):
            rows["strong_seed"][:, j] = d.strong_seed.cpu().numpy()
            rows["cutout"][:, j] = d.cutout.cpu().numpy()
        top_k = self.settings["logits"]["top_k"]
        for v, out in enumerate(logits):
            if top_k is None:
                stored = out.detach().cpu()
                rows["logits"][:, v] = (stored.view(torch.int16) if stored.dtype == torch.bfloat16 else stored).numpy()
            else:
                values, classes, rest = compact_logits(out.detach(), top_k)
                rows["top_logits"][:, v] = values.cpu().numpy()
                rows["top_classes"][:, v] = classes.cpu().numpy()
                rows["rest"][:, v] = rest.cpu().numpy()

    def finish(self, epochs: int) -> dict[str, Any]:
        """Write the manifest of a store whose shards of ``epochs`` epochs are all finished; returns it."""
        shards = {}
        for epoch in range(epochs):
            for rank in range(self.settings["world_size"]):
                name = shard_name(epoch, rank)
                digest = self.folder / f"{name}.sha256"
                if not digest.is_file():
                    raise FileNotFoundError(f"shard {name} of {self.folder} is missing: run the command again")
                shards[name] = {"sha256": digest.read_text().strip(),
                                "bytes": (self.folder / f"{name}.bin").stat().st_size}
        manifest = {**self.settings, "epochs": epochs, "shards": shards}
        _write_text(self.folder / MANIFEST, json.dumps(manifest, indent=1) + "\n")
        return manifest


def write_epochs(writer: StoreWriter, batches: TensorBatches, teacher_logits: Callable[[Tensor], Tensor],
                 epochs: list[int], progress: Progress | None = None) -> None:
    """Write the shards of ``epochs`` for this rank: every batch of ``batches`` made as a run makes it,
    the teacher's logits of each view (``teacher_logits``, called as a distiller calls the teacher:
    view by view) stored with the view's draws."""
    for epoch in epochs:
        order = batches.epoch_order(epoch)
        with writer.shard(epoch, batches.rank) as records:
            for i in range(len(batches)):
                index, draws = batches.batch_rows(order, i), batches.batch_draws(epoch, i)
                views = batches.make_batch(index, draws).views
                writer.put(records, i, index, draws, tuple(teacher_logits(view) for view in views))
                if progress is not None:
                    progress.update(1, index.shape[0] * batches.world_size)


def _differences(found: dict[str, Any], wanted: dict[str, Any], keys: list[str]) -> list[str]:
    """``key: the store has X, this run Y`` for each dotted key of ``keys`` that differs."""
    old, new = flatten(found), flatten(wanted)
    return [f"{key}: the store has {old.get(key)!r}, this run {new.get(key)!r}"
            for key in keys if old.get(key) != new.get(key)]


class TeacherStore:
    """A complete store, opened for reading."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        path = self.folder / MANIFEST
        if not path.is_file():
            if (self.folder / SETTINGS).is_file():
                raise StoreMismatch(f"the store {self.folder} is incomplete (its writer was stopped): run the same "
                                    "`intrakd teacher-outputs` command again to finish it")
            raise FileNotFoundError(f"{self.folder} holds no teacher-outputs store (no {MANIFEST}): make one with "
                                    "`intrakd teacher-outputs --teacher CKPT --out STORE`")
        self.manifest: dict[str, Any] = json.loads(path.read_text())
        if self.manifest.get("format") != STORE_FORMAT:
            raise StoreMismatch(f"the store {self.folder} was written by another version of intrakd (format "
                                f"{self.manifest.get('format')!r}, this one reads {STORE_FORMAT}): make it again")
        self.sha256 = file_digest(self.folder / SETTINGS)
        """Checksum of the store's settings: its identity in a run's provenance (extending the store to
        more epochs keeps it; its shards are checked against the manifest's checksums as they are read)."""
        self.dtype = record_dtype(self.manifest)
        self.rows_per_batch = self.manifest["data"]["batch_size"] // self.manifest["world_size"]
        for name, shard in self.manifest["shards"].items():
            data = self.folder / f"{name}.bin"
            if not data.is_file() or data.stat().st_size != shard["bytes"]:
                raise StoreMismatch(f"shard {data} of the store is missing or of the wrong size: make the store again")
        self._open: dict[tuple[int, int], np.memmap] = {}

    @property
    def epochs(self) -> int:
        return self.manifest["epochs"]

    @property
    def teacher(self) -> dict[str, Any]:
        """``{"path", "sha256", "model"}`` of the teacher whose outputs the store holds."""
        return self.manifest["teacher"]

    def mismatches(self, wanted: dict[str, Any], epochs: int, precision: str) -> list[str]:
        """What keeps a run of these :func:`view_settings`, ``epochs`` and ``precision`` from reading this
        store, each naming the setting (empty: it may)."""
        keys = sorted(k for k in flatten(wanted) if k not in ("views", "strong_views"))
        found = _differences(self.manifest, wanted, keys)
        if self.manifest["precision"] != precision:
            found.append(f"perf.precision: the teacher's logits were computed in {self.manifest['precision']}, this "
                         f"run computes in {precision} (set perf.precision={self.manifest['precision']})")
        if not views_served(self.manifest["views"], self.manifest["strong_views"], wanted["views"],
                            wanted["strong_views"]):
            found.append(f"views: the store holds {self.manifest['views']} views per image "
                         f"({self.manifest['strong_views']} strongly augmented), this method needs "
                         f"{wanted['views']} ({wanted['strong_views']} strong): make a store with its distill.method")
        if epochs > self.epochs:
            found.append(f"epochs: the run trains {epochs} epochs, the store holds {self.epochs}: extend it with "
                         f"`intrakd teacher-outputs ... --epochs {epochs} --out {self.folder}`")
        return found

    def shard(self, epoch: int, rank: int) -> np.memmap:
        """The records of ``(epoch, rank)``, checked against the manifest's checksum when first opened."""
        key = (epoch, rank)
        if key not in self._open:
            name = shard_name(epoch, rank)
            path = self.folder / f"{name}.bin"
            if name not in self.manifest["shards"]:
                raise StoreMismatch(f"the store {self.folder} holds no shard for epoch {epoch + 1}, rank {rank}")
            if file_digest(path) != self.manifest["shards"][name]["sha256"]:
                raise StoreMismatch(f"shard {path} is damaged (its checksum differs from the manifest's): make the "
                                    "store again, then resume the run")
            self._open = {key: np.memmap(path, self.dtype, mode="r", shape=(self.manifest["shards"][name]["bytes"]
                                                                            // self.dtype.itemsize,))}
        return self._open[key]

    def read(self, epoch: int, rank: int, i: int, views: int, device: torch.device
             ) -> tuple[Tensor, tuple[ViewDraws, ...], tuple[Tensor, ...]]:
        """``(indices, draws of each view, the teacher's logits of each view)`` of this rank's rows of batch
        ``i`` of epoch ``epoch``, for the first ``views`` views, on ``device``."""
        rows = np.array(self.shard(epoch, rank)[i * self.rows_per_batch : (i + 1) * self.rows_per_batch])
        names = rows.dtype.names
        first_strong = self.manifest["views"] - self.manifest["strong_views"]

        def column(name: str, *at: int) -> Tensor:
            return torch.from_numpy(np.ascontiguousarray(rows[name][(slice(None), *at)])).to(device)

        draws, logits = [], []
        for v in range(views):
            strong = v >= first_strong
            draws.append(ViewDraws(
                crop=column("crop", v).long() if "crop" in names else None,
                flip=column("flip", v).bool() if "flip" in names else None,
                strong_seed=column("strong_seed", v - first_strong) if strong else None,
                cutout=column("cutout", v - first_strong) if strong else None))
            if "logits" in names:
                stored = column("logits", v)
                logits.append(stored.view(torch.bfloat16) if self.manifest["logits"]["dtype"] == "bfloat16" else stored)
            else:
                logits.append(expand_logits(column("top_logits", v), column("top_classes", v), column("rest", v),
                                            self.manifest["num_classes"]))
        return column("index"), tuple(draws), tuple(logits)


class StoredBatches:
    """The batches of ``live``, replayed from ``store``: the images and views each batch of the live
    run would have (made from the stored indices and draws), with the teacher's stored logits
    (:attr:`Batch.teacher_logits`). Implements :class:`~intrakd.data.Batches`."""

    def __init__(self, live: TensorBatches, store: TeacherStore) -> None:
        self.live, self.store = live, store
        self.epoch = self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.live.set_epoch(epoch, start)
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return len(self.live)

    def __iter__(self) -> Iterator[Batch]:
        live, device = self.live, self.live.data.images.device
        for i in range(self.start, len(live)):
            index, draws, logits = self.store.read(self.epoch, live.rank, i, live.views, device)
            batch = live.make_batch(index, draws)
            batch.teacher_logits = logits
            yield batch
