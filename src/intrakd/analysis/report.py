"""Tables over run folders: group runs by configuration, mean +- std over seeds, differences with CIs.

A run folder is one that holds ``config.yaml``; it is finished when it also holds ``summary.json``.
Runs are grouped by their whole resolved configuration except the seed (and settings that do not
change results: device, data root, evaluation batch size). A student's configuration includes its
teacher's (under ``teacher.``), read from the teacher's run folder, so students of teachers that
differ only in seed fall in one group.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from intrakd.config import RUN_COMMANDS, parse_yaml_value, read_yaml, upgrade_stored
from intrakd.config import flatten as flatten_config

IGNORED_KEYS = frozenset({"seed", "device", "command", "data.root", "data.eval_batch_size"})
DEFAULT_METRICS = (
    "test_acc", "val_acc", "test_intra_class_distance", "test_inter_class_distance", "test_intra_inter_ratio",
    "test_soft_entropy", "test_soft_off_target_mass", "test_ece", "val_intra_inter_ratio", "val_soft_entropy",
    "last_pass_rate", "train_s", "images_per_s",
)
"""Metrics a table shows by default, those that any of its runs has, in this order."""


@dataclass
class RunRecord:
    """One finished run: where it is, what kind, its seed, its flattened configuration and metrics."""

    path: Path
    kind: str
    seed: int | None
    config: dict[str, Any]
    metrics: dict[str, float]


@dataclass
class Group:
    """Runs of one kind that share a configuration apart from the seed."""

    kind: str
    config: dict[str, Any]
    runs: list[RunRecord] = field(default_factory=list)
    label: str = ""

    @property
    def seeds(self) -> list[int | None]:
        return [r.seed for r in self.runs]

    def values(self, metric: str) -> list[float]:
        return [r.metrics[metric] for r in self.runs if metric in r.metrics]


@dataclass
class Difference:
    """``mean(group) - mean(baseline)`` of one metric with its 95% confidence interval."""

    metric: str
    baseline: str
    diff: float
    low: float
    high: float
    method: str
    """'paired' (t on the per-seed differences), 'welch' (unequal-variance t) or 'n/a' (too few runs)."""
    n: int


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


def run_config(run_dir: Path, _seen: frozenset[Path] = frozenset()) -> tuple[str, int | None, dict[str, Any]]:
    """(kind, seed, flattened configuration without ignored keys) of a run folder.

    A student's teacher settings are read from the teacher's run folder (under ``teacher.``), unless
    that folder is one already on the way (a run that names itself or a cycle: the path is kept)."""
    raw = upgrade_stored(read_yaml(run_dir / "config.yaml") or {})
    kinds = {command: kind for kind, command in RUN_COMMANDS.items()}
    kind = kinds.get(raw.get("command"), raw.get("command") or "run")
    seed = raw.get("seed")
    config = {k: v for k, v in flatten(raw).items() if k not in IGNORED_KEYS}
    teacher = raw.get("teacher")
    if kind == "student" and isinstance(teacher, str):
        teacher_dir = _teacher_run_dir(teacher)
        seen = _seen | {run_dir.resolve()}
        if teacher_dir is not None and teacher_dir.resolve() not in seen:
            del config["teacher"]
            _, _, teacher_config = run_config(teacher_dir, seen)
            config.update({f"teacher.{k}": v for k, v in teacher_config.items()})
    return kind, seed, config


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


def _format_value(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ",".join(map(_format_value, value)) + "]"
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "null"
    return str(value)


def group_runs(runs: Sequence[RunRecord]) -> list[Group]:
    """Groups of runs with equal kind and configuration; labelled by the settings that vary.

    A group's label lists ``key=value`` for every key whose value differs between groups of its
    kind (``all`` when there is one group). Groups are ordered by kind (teachers first), then label.
    """
    groups: dict[tuple[str, tuple], Group] = {}
    for run in runs:
        key = (run.kind, tuple(sorted((k, repr(v)) for k, v in run.config.items())))
        groups.setdefault(key, Group(run.kind, run.config)).runs.append(run)
    result = list(groups.values())
    for kind in {g.kind for g in result}:
        same = [g for g in result if g.kind == kind]
        keys = sorted({k for g in same for k in g.config})
        varying = [k for k in keys if len({repr(g.config.get(k)) for g in same}) > 1]
        for g in same:
            g.label = ", ".join(f"{k}={_format_value(g.config.get(k))}" for k in varying) or "all"
    for g in result:
        g.runs.sort(key=lambda r: (r.seed is None, r.seed if r.seed is not None else 0, str(r.path)))
    order = {"teacher": 0, "student": 1}
    return sorted(result, key=lambda g: (order.get(g.kind, 2), g.kind, g.label))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; NaN for one value)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return mean, std


def _t_quantile(df: float, confidence: float = 0.95) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, df))


def difference(group: Group, baseline: Group, metric: str, confidence: float = 0.95) -> Difference | None:
    """Difference of means of ``metric`` (group minus baseline) with its confidence interval.

    Paired by seed when both groups hold the same set of distinct seeds (at least two): the t
    interval of the per-seed differences, df = n - 1. Otherwise Welch's unequal-variance t interval
    with Welch-Satterthwaite degrees of freedom (both groups need two runs). With too few runs the
    bounds are NaN and the method 'n/a'. None when either group lacks the metric.
    """
    a = {r.seed: r.metrics[metric] for r in group.runs if metric in r.metrics}
    b = {r.seed: r.metrics[metric] for r in baseline.runs if metric in r.metrics}
    values_a, values_b = group.values(metric), baseline.values(metric)
    if not values_a or not values_b:
        return None
    diff = mean_std(values_a)[0] - mean_std(values_b)[0]
    paired = (len(a) == len(values_a) and len(b) == len(values_b) and set(a) == set(b) and len(a) >= 2
              and None not in a)
    if paired:
        diffs = [a[s] - b[s] for s in sorted(a)]
        _, sd = mean_std(diffs)
        half = _t_quantile(len(diffs) - 1, confidence) * sd / math.sqrt(len(diffs))
        return Difference(metric, baseline.label, diff, diff - half, diff + half, "paired", len(diffs))
    if len(values_a) >= 2 and len(values_b) >= 2:
        (_, sa), (_, sb) = mean_std(values_a), mean_std(values_b)
        va, vb = sa**2 / len(values_a), sb**2 / len(values_b)
        se = math.sqrt(va + vb)
        if se == 0:
            return Difference(metric, baseline.label, diff, diff, diff, "welch", min(len(values_a), len(values_b)))
        df = (va + vb) ** 2 / (va**2 / (len(values_a) - 1) + vb**2 / (len(values_b) - 1))
        half = _t_quantile(df, confidence) * se
        return Difference(metric, baseline.label, diff, diff - half, diff + half, "welch",
                          min(len(values_a), len(values_b)))
    return Difference(metric, baseline.label, diff, math.nan, math.nan, "n/a", min(len(values_a), len(values_b)))


def parse_condition(text: str) -> tuple[str, Any]:
    """``key=value`` (value read as YAML) -> (key, value)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ValueError(f"{text!r} is not of the form key=value (e.g. intra.weight=0)")
    value = parse_yaml_value(raw, f"condition {text!r}")
    return key, tuple(value) if isinstance(value, list) else value


def _matches(config: dict[str, Any], key: str, value: Any) -> bool:
    actual = config.get(key)
    if isinstance(actual, (int, float)) and isinstance(value, (int, float)) and not isinstance(actual, bool):
        return float(actual) == float(value)
    return actual == value


def find_baseline(group: Group, groups: Sequence[Group], baseline: tuple[str, Any]) -> Group | None:
    """The baseline group for ``group``: of the same kind, meeting the baseline condition, and
    differing from ``group`` in the fewest settings. The condition's key is looked up as given and
    with ``teacher.`` in front (so ``intra.weight=0`` selects vanilla teachers and the students of
    vanilla teachers). None when ``group`` is itself a baseline or none exists."""
    key, value = baseline

    def is_baseline(g: Group) -> bool:
        return any(k in g.config and _matches(g.config, k, value) for k in (key, f"teacher.{key}"))

    if is_baseline(group):
        return None
    candidates = [g for g in groups if g.kind == group.kind and is_baseline(g)]
    if not candidates:
        return None

    def distance(g: Group) -> int:
        keys = set(g.config) | set(group.config)
        return sum(repr(g.config.get(k)) != repr(group.config.get(k)) for k in keys)

    return min(candidates, key=distance)


@dataclass
class Report:
    """Grouped runs, the metrics shown, and each group's difference from its baseline."""

    groups: list[Group]
    metrics: dict[str, list[str]]
    """Metrics shown per kind."""
    differences: dict[int, list[Difference]]
    """Index into ``groups`` -> its differences (one per compared metric)."""
    unfinished: list[Path]
    baseline: tuple[str, Any]


def build_report(
    paths: Sequence[str | Path], metrics: Sequence[str] | None = None, compare: Sequence[str] | None = None,
    baseline: str = "intra.weight=0", where: Sequence[str] = (),
) -> Report:
    """Collect the runs under ``paths`` (keeping those meeting every ``where`` condition) into a report.

    ``metrics``: the columns (default: those of :data:`DEFAULT_METRICS` that the kind's runs have).
    ``compare``: the metrics whose difference from the baseline is computed (default: the first of
    test_acc, val_acc that the kind's runs have).
    """
    runs, unfinished = find_runs(paths)
    conditions = [parse_condition(c) for c in where]
    runs = [r for r in runs if all(any(_matches(r.config, k2, v) for k2 in (k, f"teacher.{k}") if k2 in r.config)
                                   for k, v in conditions)]
    if not runs:
        raise ValueError(f"no finished runs under {', '.join(map(str, paths))}"
                         + (f" matching {', '.join(where)}" if where else "")
                         + (f" ({len(unfinished)} unfinished)" if unfinished else ""))
    groups = group_runs(runs)
    base = parse_condition(baseline)
    shown: dict[str, list[str]] = {}
    differences: dict[int, list[Difference]] = {}
    for kind in dict.fromkeys(g.kind for g in groups):
        present = {m for g in groups if g.kind == kind for r in g.runs for m in r.metrics}
        if metrics:
            missing = [m for m in metrics if m not in present]
            if len(missing) == len(metrics):
                raise ValueError(f"none of the metrics {', '.join(metrics)} is in the {kind} runs; "
                                 f"available: {', '.join(sorted(present))}")
            shown[kind] = [m for m in metrics if m in present]
        else:
            shown[kind] = [m for m in DEFAULT_METRICS if m in present]
        compared = [m for m in (compare or [next((m for m in ("test_acc", "val_acc") if m in present), "")])
                    if m in present]
        for i, g in enumerate(groups):
            if g.kind != kind:
                continue
            reference = find_baseline(g, groups, base)
            if reference is not None:
                found = [difference(g, reference, m) for m in compared]
                differences[i] = [d for d in found if d is not None]
    return Report(groups, shown, differences, unfinished, base)


def _fmt(mean: float, std: float, digits: int) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if not math.isnan(std) else "")


def _digits(metric: str) -> int:
    return 2 if metric.endswith("_acc") or metric in ("train_s", "wall_s", "images_per_s", "peak_images_per_s") else 4


def _ci(d: Difference) -> str:
    digits = _digits(d.metric)
    if d.method == "n/a":
        return f"{d.diff:+.{digits}f} (n={d.n}, no CI)"
    return f"{d.diff:+.{digits}f} [{d.low:+.{digits}f}, {d.high:+.{digits}f}] ({d.method}, n={d.n})"


def to_markdown(report: Report) -> str:
    """One table per kind: group, seeds, every metric as mean ± std, difference from the baseline."""
    key, value = report.baseline
    lines: list[str] = []
    for kind, metrics in report.metrics.items():
        rows = [(i, g) for i, g in enumerate(report.groups) if g.kind == kind]
        compared = list(dict.fromkeys(d.metric for i, _ in rows for d in report.differences.get(i, [])))
        header = ["configuration", "seeds", *metrics, *[f"Δ {m} vs {key}={_format_value(value)} [95% CI]"
                                                       for m in compared]]
        lines += [f"### {kind}s ({len(rows)} configurations, {sum(len(g.runs) for _, g in rows)} runs)", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for i, g in rows:
            cells = [g.label, ",".join(str(s) for s in g.seeds)]
            cells += [_fmt(*mean_std(g.values(m)), _digits(m)) for m in metrics]
            diffs = {d.metric: d for d in report.differences.get(i, [])}
            cells += [_ci(diffs[m]) if m in diffs else ("baseline" if find_baseline(g, report.groups, report.baseline)
                                                         is None else "-") for m in compared]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("Mean ± sample standard deviation over seeds. Differences: group mean minus the mean of its "
                 "baseline group (the closest configuration with "
                 f"{key}={_format_value(value)}); 95% t interval, paired by seed when both groups hold the "
                 "same seeds, else Welch.")
    if report.unfinished:
        lines += ["", f"Unfinished runs (not included): {len(report.unfinished)}: "
                  + ", ".join(str(p) for p in report.unfinished)]
    return "\n".join(lines) + "\n"


def to_csv(report: Report) -> str:
    """One row per group: its configuration label, seeds, every metric's mean/std/n, differences."""
    metrics = list(dict.fromkeys(m for ms in report.metrics.values() for m in ms))
    compared = list(dict.fromkeys(d.metric for ds in report.differences.values() for d in ds))
    out = io.StringIO()
    writer = csv.writer(out)
    header = ["kind", "configuration", "seeds", "runs"]
    for m in metrics:
        header += [f"{m}_mean", f"{m}_std", f"{m}_n"]
    for m in compared:
        header += [f"diff_{m}", f"diff_{m}_ci_low", f"diff_{m}_ci_high", f"diff_{m}_method", f"diff_{m}_baseline"]
    writer.writerow(header)
    for i, g in enumerate(report.groups):
        row: list[Any] = [g.kind, g.label, " ".join(str(s) for s in g.seeds), len(g.runs)]
        for m in metrics:
            values = g.values(m)
            mean, std = mean_std(values)
            row += [_csv_num(mean), _csv_num(std), len(values)]
        diffs = {d.metric: d for d in report.differences.get(i, [])}
        for m in compared:
            d = diffs.get(m)
            row += ([_csv_num(d.diff), _csv_num(d.low), _csv_num(d.high), d.method, d.baseline] if d
                    else ["", "", "", "", ""])
        writer.writerow(row)
    return out.getvalue()


def _csv_num(value: float) -> str:
    return "" if math.isnan(value) else repr(value)


def write_report(report: Report, prefix: str | Path) -> tuple[Path, Path]:
    """Write ``<prefix>.md`` and ``<prefix>.csv``."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    md, table = prefix.with_name(prefix.name + ".md"), prefix.with_name(prefix.name + ".csv")
    md.write_text(to_markdown(report))
    table.write_text(to_csv(report))
    return md, table
