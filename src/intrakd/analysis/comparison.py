"""Statistics over runs: runs grouped by configuration, mean +- std over seeds, and each group's
difference from its baseline group with a t confidence interval (scipy.stats)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scipy import stats

from intrakd.analysis.runfolders import RunRecord, find_runs
from intrakd.config import ConfigError, parse_yaml_value

DEFAULT_METRICS = (
    "test_acc", "val_acc", "test_intra_class_distance", "test_inter_class_distance", "test_intra_inter_ratio",
    "test_soft_entropy", "test_soft_off_target_mass", "test_ece", "val_intra_inter_ratio", "val_soft_entropy",
    "last_pass_rate", "train_s", "images_per_s",
)
"""Metrics a table shows by default, those that any of its runs has, in this order."""


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


def format_value(value: Any) -> str:
    """A setting's value as written in a label: lists as ``[a,b]``, booleans and None as in YAML."""
    if isinstance(value, tuple):
        return "[" + ",".join(map(format_value, value)) + "]"
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
            g.label = ", ".join(f"{k}={format_value(g.config.get(k))}" for k in varying) or "all"
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


def paired_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Confidence interval of the mean of ``a - b`` (paired): ``scipy.stats.ttest_rel``'s, df = n - 1.

    NaN for fewer than two pairs; the point itself when the differences have no spread (where scipy
    would return NaN).
    """
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    if len(diffs) < 2:
        return math.nan, math.nan
    if len(set(diffs)) == 1:
        mean = sum(diffs) / len(diffs)
        return mean, mean
    low, high = stats.ttest_rel(a, b).confidence_interval(confidence)
    return float(low), float(high)


def welch_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Confidence interval of ``mean(a) - mean(b)`` by Welch's unequal-variance t
    (``scipy.stats.ttest_ind(equal_var=False)``, Welch-Satterthwaite degrees of freedom).

    NaN when either side has fewer than two values; the point itself when neither has spread.
    """
    if len(a) < 2 or len(b) < 2:
        return math.nan, math.nan
    if len(set(a)) == 1 and len(set(b)) == 1:
        diff = mean_std(a)[0] - mean_std(b)[0]
        return diff, diff
    low, high = stats.ttest_ind(a, b, equal_var=False).confidence_interval(confidence)
    return float(low), float(high)


def difference(group: Group, baseline: Group, metric: str, confidence: float = 0.95) -> Difference | None:
    """Difference of means of ``metric`` (group minus baseline) with its confidence interval.

    Paired by seed when the seeds of one group are all among the other's (at least two, one run a
    seed in each group): the difference and :func:`paired_interval` over the seeds both hold (an
    ablation run on seeds 0-2 against a baseline of seeds 0-7 is compared on seeds 0-2). Otherwise
    the difference of the means and :func:`welch_interval` (both groups need two runs). With too few
    runs the bounds are NaN and the method 'n/a'. None when either group lacks the metric.
    """
    a = {r.seed: r.metrics[metric] for r in group.runs if metric in r.metrics}
    b = {r.seed: r.metrics[metric] for r in baseline.runs if metric in r.metrics}
    values_a, values_b = group.values(metric), baseline.values(metric)
    if not values_a or not values_b:
        return None
    seeds = sorted(set(a) & set(b)) if None not in a and None not in b else []
    one_run_a_seed = len(a) == len(values_a) and len(b) == len(values_b)
    if one_run_a_seed and len(seeds) >= 2 and (set(a) <= set(b) or set(b) <= set(a)):
        x, y = [a[s] for s in seeds], [b[s] for s in seeds]
        low, high = paired_interval(x, y, confidence)
        return Difference(metric, baseline.label, mean_std(x)[0] - mean_std(y)[0], low, high, "paired", len(seeds))
    diff = mean_std(values_a)[0] - mean_std(values_b)[0]
    n = min(len(values_a), len(values_b))
    if n >= 2:
        low, high = welch_interval(values_a, values_b, confidence)
        return Difference(metric, baseline.label, diff, low, high, "welch", n)
    return Difference(metric, baseline.label, diff, math.nan, math.nan, "n/a", n)


def parse_condition(text: str) -> tuple[str, Any]:
    """``key=value`` (value read as YAML) -> (key, value)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"{text!r} is not of the form key=value (e.g. intra.weight=0)")
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
        raise ConfigError(f"no finished runs under {', '.join(map(str, paths))}"
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
                raise ConfigError(f"none of the metrics {', '.join(metrics)} is in the {kind} runs; "
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


def sd_interval(sd: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Confidence interval of a standard deviation ``sd`` measured on ``n`` values (chi-square, df = n - 1)."""
    df = n - 1
    alpha = 1 - confidence
    return (sd * math.sqrt(df / stats.chi2.ppf(1 - alpha / 2, df)),
            sd * math.sqrt(df / stats.chi2.ppf(alpha / 2, df)))


def seeds_for_halfwidth(sd: float, halfwidth: float, confidence: float = 0.95) -> int:
    """Fewest paired seeds whose t interval of the mean difference has at most ``halfwidth``, for a spread
    ``sd`` of the per-seed differences taken as known."""
    n = 2
    while stats.t.ppf(1 - (1 - confidence) / 2, n - 1) * sd / math.sqrt(n) > halfwidth:
        n += 1
    return n


def paired_power(effect: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t test at level ``alpha`` against a true mean difference ``effect``,
    ``n`` pairs whose differences have spread ``sd`` (noncentral t)."""
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = effect / (sd / math.sqrt(n))
    return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))


def seeds_for_power(effect: float, sd: float, power: float = 0.8, alpha: float = 0.05) -> int:
    """Fewest paired seeds for which :func:`paired_power` reaches ``power``."""
    n = 2
    while paired_power(effect, sd, n, alpha) < power:
        n += 1
    return n


@dataclass(frozen=True)
class Pooled:
    """Inverse-variance pooled estimate of one effect measured by several studies.

    ``fixed``/``fixed_se``: fixed effect; ``random``/``random_se``: DerSimonian-Laird random effects;
    ``q`` Cochran's Q on ``k - 1`` degrees of freedom with its p value, ``i2`` the share of the spread
    beyond chance (0-1), ``tau2`` the between-study variance.
    """

    k: int
    fixed: float
    fixed_se: float
    random: float
    random_se: float
    q: float
    q_p: float
    i2: float
    tau2: float

    def interval(self, which: str, confidence: float = 0.95) -> tuple[float, float]:
        """Normal interval of ``which`` ("fixed" or "random")."""
        z = stats.norm.ppf(1 - (1 - confidence) / 2)
        mean, se = (self.fixed, self.fixed_se) if which == "fixed" else (self.random, self.random_se)
        return mean - z * se, mean + z * se


def se_from_interval(low: float, high: float, n: int, confidence: float = 0.95) -> float:
    """Standard error behind a t interval ``[low, high]`` of a mean over ``n`` values (df = n - 1)."""
    return (high - low) / 2 / stats.t.ppf(1 - (1 - confidence) / 2, n - 1)


def pool_effects(estimates: Sequence[float], ses: Sequence[float]) -> Pooled:
    """Fixed-effect and DerSimonian-Laird random-effects pooling of ``estimates`` with standard errors ``ses``."""
    if len(estimates) != len(ses) or len(estimates) < 2:
        raise ConfigError(f"pooling needs at least two estimates, each with a standard error; "
                         f"got {len(estimates)} estimates and {len(ses)} standard errors")
    if any(not se > 0 for se in ses):
        raise ConfigError(f"every standard error must be positive; got {list(ses)}")
    w = [1 / se**2 for se in ses]
    sw = sum(w)
    fixed = sum(wi * y for wi, y in zip(w, estimates, strict=True)) / sw
    q = sum(wi * (y - fixed) ** 2 for wi, y in zip(w, estimates, strict=True))
    df = len(estimates) - 1
    tau2 = max(0.0, (q - df) / (sw - sum(wi**2 for wi in w) / sw))
    wr = [1 / (se**2 + tau2) for se in ses]
    random = sum(wi * y for wi, y in zip(wr, estimates, strict=True)) / sum(wr)
    return Pooled(k=len(estimates), fixed=fixed, fixed_se=math.sqrt(1 / sw), random=random,
                  random_se=math.sqrt(1 / sum(wr)), q=q, q_p=float(stats.chi2.sf(q, df)),
                  i2=max(0.0, (q - df) / q) if q > 0 else 0.0, tau2=tau2)
