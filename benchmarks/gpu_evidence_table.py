"""The final tables of ``gpu_evidence.sh``: each run's images/s beside the reference loop's, and the
paired enriched - vanilla differences of test accuracy.

    python benchmarks/gpu_evidence_table.py OUT [--json OUT/gpu_evidence.json]

Reads ``OUT/loop_vs_reference.json`` (the reference loop, measured alone before the runs) and
``OUT/runs/<teacher|student>-<variant>-seed<k>/`` (``metrics.jsonl``, ``summary.json`` when the run
finished). A run's images/s: "steady" is the median over its epochs after the first (the first
includes compilation; with one epoch, that epoch), "first" the first epoch's. The runs share the GPU
with one another while the reference ran alone, so a run's own ratio understates intrakd; the
"together" rows add the steady images/s of the runs of one kind (they ran at the same time, roughly).
Teachers train on two views of each image; images/s counts images, as the reference's one-view loop does.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from pathlib import Path
from typing import Any

from _markdown import table

RUN_NAME = re.compile(r"(?P<kind>teacher|student)-(?P<variant>vanilla|enriched)-seed(?P<seed>\d+)")
REFERENCE_TASK = {"teacher": "teacher", "student": "kd"}


def reference_speeds(path: Path) -> dict[str, dict[str, float]]:
    """``{task: {loop: images/s}}`` of loop_vs_reference.json (empty when it is missing)."""
    if not path.is_file():
        return {}
    speeds: dict[str, dict[str, float]] = {}
    for row in json.loads(path.read_text()).get("results", []):
        speeds.setdefault(row["task"], {})[row["loop"]] = row["images_per_s"]
    return speeds


def read_run(folder: Path) -> dict[str, Any] | None:
    """One run's figures, or None for a folder that is not a run of gpu_evidence.sh."""
    match = RUN_NAME.fullmatch(folder.name)
    if match is None:
        return None
    lines = (folder / "metrics.jsonl").read_text().splitlines() if (folder / "metrics.jsonl").is_file() else []
    records = [json.loads(line) for line in lines if line.strip()]
    speeds = [r["images_per_s"] for r in records if "images_per_s" in r]
    summary_path = folder / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    return {
        "run": folder.name, "kind": match["kind"], "variant": match["variant"], "seed": int(match["seed"]),
        "finished": summary is not None, "epochs_done": len(records),
        "test_acc": summary["final_acc"] if summary else None,
        "steady_images_per_s": statistics.median(speeds[1:] or speeds) if speeds else None,
        "first_images_per_s": speeds[0] if speeds else None,
        "wall_s": summary.get("wall_seconds") if summary else None,
    }


def paired(runs: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    """Enriched - vanilla test accuracy of ``kind`` runs, paired by seed, with a 95% t interval."""
    acc = {(r["variant"], r["seed"]): r["test_acc"] for r in runs if r["kind"] == kind and r["finished"]}
    seeds = sorted(s for v, s in acc if v == "enriched" and ("vanilla", s) in acc)
    if not seeds:
        return None
    diffs = [acc[("enriched", s)] - acc[("vanilla", s)] for s in seeds]
    mean = statistics.fmean(diffs)
    ci95 = None  # needs two seeds
    if len(diffs) >= 2:
        from scipy.stats import t

        half = float(t.ppf(0.975, len(diffs) - 1)) * statistics.stdev(diffs) / math.sqrt(len(diffs))
        ci95 = [mean - half, mean + half]
    return {"kind": kind, "seeds": seeds, "vanilla": [acc[("vanilla", s)] for s in seeds],
            "enriched": [acc[("enriched", s)] for s in seeds], "diffs": diffs, "mean_diff": mean, "ci95": ci95}


def build(out: Path) -> dict[str, Any]:
    """Every figure of the tables, from the files of ``out``."""
    reference = reference_speeds(out / "loop_vs_reference.json")
    runs = [r for folder in sorted((out / "runs").glob("*")) if (r := read_run(folder)) is not None]
    for r in runs:
        ref = reference.get(REFERENCE_TASK[r["kind"]], {}).get("reference")
        r["reference_images_per_s"] = ref
        r["vs_reference"] = r["steady_images_per_s"] / ref if ref and r["steady_images_per_s"] else None
    together = []
    for kind in ("teacher", "student"):
        speeds = [r["steady_images_per_s"] for r in runs if r["kind"] == kind and r["steady_images_per_s"]]
        ref = reference.get(REFERENCE_TASK[kind], {}).get("reference")
        if speeds:
            total = sum(speeds)
            together.append({"run": f"all {kind}s together ({len(speeds)})", "steady_images_per_s": total,
                             "reference_images_per_s": ref, "vs_reference": total / ref if ref else None})
    return {"reference": reference, "runs": runs, "together": together,
            "paired": [p for kind in ("teacher", "student") if (p := paired(runs, kind)) is not None]}


def render(result: dict[str, Any]) -> str:
    """The tables as Markdown."""
    lines = ["## images/s: intrakd runs (concurrent, CUDA graphs) vs the reference loop (alone)", ""]
    columns = ["run", "finished", "epochs_done", "test_acc", "steady_images_per_s", "first_images_per_s",
               "reference_images_per_s", "vs_reference"]
    lines.append(table(result["runs"] + result["together"], columns))
    for task, loops in result["reference"].items():
        lines.append(f"\nloop_vs_reference, {task} (alone, eager): "
                     + ", ".join(f"{loop} {value:.0f}" for loop, value in loops.items()) + " images/s")
    lines += ["", "## test accuracy, enriched - vanilla, paired by seed", ""]
    rows = [{**p, "ci95": "[{:.2f}, {:.2f}]".format(*p["ci95"]) if p["ci95"] else "n/a (one seed)",
             "seeds": len(p["seeds"])} for p in result["paired"]]
    lines.append(table(rows, ["kind", "seeds", "mean_diff", "ci95"]) if rows else "(no finished pair)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the OUT folder of gpu_evidence.sh")
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON to PATH")
    args = parser.parse_args(argv)
    result = build(args.out)
    print(render(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["runs"] else 1


if __name__ == "__main__":
    sys.exit(main())
