"""A report's tables: one markdown table per kind of run and one CSV row per group, written side by side.

The report itself (runs grouped by configuration, differences from baselines) is
:func:`~intrakd.analysis.comparison.build_report`; it and :func:`~intrakd.analysis.runfolders.read_metrics`
are importable from here too.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from intrakd.analysis.comparison import (
    Difference,
    Report,
    build_report,
    find_baseline,
    format_value,
    mean_std,
)
from intrakd.analysis.runfolders import read_metrics

__all__ = ["build_report", "read_metrics", "to_csv", "to_markdown", "write_report"]


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
        header = ["configuration", "seeds", *metrics, *[f"Δ {m} vs {key}={format_value(value)} [95% CI]"
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
    lines.append("Mean ± sample standard deviation over seeds. Differences: group minus its baseline group "
                 f"(the closest configuration with {key}={format_value(value)}): when one group's seeds are "
                 "among the other's, the mean of the per-seed differences over the seeds both hold with its "
                 "95% t interval (paired); else the difference of the means with Welch's 95% interval.")
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
