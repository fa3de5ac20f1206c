"""Run discovery: find the run folders under some paths and read each one's configuration and metrics.

A run folder is one that holds ``config.yaml``; it is finished when it also holds ``summary.json``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from intrakd.config import (
    RESULT_NEUTRAL_KEYS,
    RUN_COMMANDS,
    RUN_CONFIGS,
    key_in,
    read_yaml,
    to_dict,
)
from intrakd.config import flatten as flatten_config
from intrakd.data.teacher_store import SETTINGS
from intrakd.train.runfolder import upgrade_stored

IGNORED_KEYS = ("seed", "command", *RESULT_NEUTRAL_KEYS)
"""Settings left out of a run's configuration as read here (:func:`~intrakd.config.key_in`): the
result-neutral ones, the seed (runs over seeds are repeats) and the command (the run's kind)."""


@dataclass
class RunRecord:
    """One finished run: where it is, what kind, its seed, its flattened configuration and metrics."""

    path: Path
    kind: str
    seed: int | None
    config: dict[str, Any]
    metrics: dict[str, float]


def flatten(values: dict[str, Any]) -> dict[str, Any]:
    """``{"a": {"b": [1]}}`` -> ``{"a.b": (1,)}``: dotted keys, lists as tuples (hashable)."""
    return {key: tuple(value) if isinstance(value, list) else value
            for key, value in flatten_config(values).items()}


def _teacher_run_dir(checkpoint: str) -> Path | None:
    path = Path(checkpoint)
    for folder in (path.parent.parent, path.parent):
        if (folder / "config.yaml").is_file():
            return folder
    return None


@functools.cache
def _defaults(kind: str) -> dict[str, Any]:
    """The flattened default configuration of a run kind (read-only: shared between calls)."""
    return flatten(to_dict(RUN_CONFIGS[kind]()))


def _unused_section(key: str, distill: Any) -> bool:
    """Whether ``key`` is a setting of a distillation method or learned temperature the run does not use
    (``distill.ab.init_epochs`` of a KD run): it changes nothing, so it neither labels nor splits groups."""
    from intrakd.objectives import list_distillers, list_temperatures

    parts = key.split(".")
    if len(parts) < 3 or parts[0] != "distill" or not isinstance(distill, dict):
        return False
    used = {distill.get("method", "kd"), distill.get("temperature")}
    return parts[1] in {*list_distillers(), *list_temperatures()} and parts[1] not in used


def run_config(run_dir: Path, _seen: frozenset[Path] = frozenset()) -> tuple[str, int | None, dict[str, Any]]:
    """(kind, seed, flattened configuration without ignored keys) of a run folder.

    A student's configuration includes its teacher's (under ``teacher.``), read from the teacher's
    run folder, so students of teachers that differ only in seed have equal configurations; unless
    that folder is one already on the way (a run that names itself, or a cycle: the path is kept).
    """
    raw = upgrade_stored(read_yaml(run_dir / "config.yaml") or {})
    kinds = {command: kind for kind, command in RUN_COMMANDS.items()}
    kind = kinds.get(raw.get("command"), raw.get("command") or "run")
    seed = raw.get("seed")
    # a setting newer than the run is at its default (upgrade_stored says where that is not so)
    defaults = _defaults(kind) if kind in RUN_CONFIGS else {}
    config = {k: v for k, v in {**defaults, **flatten(raw)}.items()
              if not key_in(k, IGNORED_KEYS) and not _unused_section(k, raw.get("distill"))}
    if config.get("teacher_outputs"):  # the store's path says nothing; whether it kept every class does
        config.update(stored_logits(Path(config.pop("teacher_outputs"))))
    config.pop("teacher_outputs", None)
    teacher = raw.get("teacher")
    if kind == "student" and isinstance(teacher, str):
        teacher_dir = _teacher_run_dir(teacher)
        seen = _seen | {run_dir.resolve()}
        if teacher_dir is not None and teacher_dir.resolve() not in seen:
            del config["teacher"]
            _, _, teacher_config = run_config(teacher_dir, seen)
            config.update({f"teacher.{k}": v for k, v in teacher_config.items()})
    return kind, seed, config


def stored_logits(store: Path) -> dict[str, Any]:
    """What a student that read its teacher's logits from ``store`` differs in from one that ran the
    teacher: nothing when the store kept every class as computed (the student is the live teacher's),
    ``teacher_outputs.top_k`` when it kept the top K; the store's path when it cannot be read."""
    try:
        top_k = json.loads((store / SETTINGS).read_text())["logits"]["top_k"]
    except (OSError, ValueError, KeyError, TypeError):
        return {"teacher_outputs": str(store)}
    return {} if top_k is None else {"teacher_outputs.top_k": top_k}


def run_metrics(run_dir: Path) -> dict[str, float]:
    """The numbers of a finished run.

    From ``summary.json``: ``<split>_acc`` (the last epoch's accuracy on the run's eval split),
    ``best_<split>_acc`` and ``wall_s``. From ``metrics.jsonl``: ``train_s`` (training time without
    evaluation, summed over epochs), ``images_per_s`` (mean over epochs), ``peak_images_per_s`` (the
    fastest epoch: the least disturbed by other load on a shared machine) and ``last_<stat>`` for the
    last epoch's pass rate and cache fill. From every ``eval_<split>.json`` (written by ``sweep``):
    its scalars as ``<split>_<name>``, e.g. ``test_acc``, ``test_ece``, ``test_soft_entropy``.
    """
    summary = json.loads((run_dir / "summary.json").read_text())
    split = summary.get("eval_split", "eval")
    metrics: dict[str, float] = {f"{split}_acc": summary["final_acc"], f"best_{split}_acc": summary["best_acc"]}
    if "wall_seconds" in summary:
        metrics["wall_s"] = summary["wall_seconds"]
    records = read_metrics(run_dir)
    if records:
        metrics["train_s"] = sum(r.get("train_seconds", 0.0) for r in records)
        speeds = [r["images_per_s"] for r in records if "images_per_s" in r]
        if speeds:
            metrics["images_per_s"] = sum(speeds) / len(speeds)
            metrics["peak_images_per_s"] = max(speeds)
        for stat in ("pass_rate", "cache_fill"):
            if stat in records[-1]:
                metrics[f"last_{stat}"] = records[-1][stat]
    for path in sorted(run_dir.glob("eval_*.json")):
        evaluated = json.loads(path.read_text())
        prefix = path.stem.removeprefix("eval_")
        metrics.update({f"{prefix}_{k}": v for k, v in evaluated.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return metrics


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The epoch records of a run's ``metrics.jsonl`` (empty when there is none)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def find_runs(paths: Iterable[str | Path]) -> tuple[list[RunRecord], list[Path]]:
    """Finished runs in or under ``paths`` (sorted by folder), and the unfinished run folders found."""
    finished, unfinished = [], []
    folders: set[Path] = set()
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        folders.update(p.parent for p in ([path / "config.yaml"] if (path / "config.yaml").is_file()
                                          else path.rglob("config.yaml")))
    for folder in sorted(folders):
        if (folder / "summary.json").is_file():
            kind, seed, config = run_config(folder)
            finished.append(RunRecord(folder, kind, seed, config, run_metrics(folder)))
        else:
            unfinished.append(folder)
    return finished, unfinished
