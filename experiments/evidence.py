"""The headline of a teacher comparison: who is who in a sweep's runs, paired differences, the pilot's
criteria and the teacher diagnostics, as one JSON document (docs/results/summary.json).

    python -m experiments.evidence RUN_DIR [RUN_DIR ...] --out SUMMARY.json --protocol NAME [--pilot-seeds 3]

The runs are those of one sweep (``OUT/teachers`` and ``OUT/students``) with exactly these roles,
told apart by their settings: the vanilla teacher (``intra.weight=0``, the teacher architecture), the
enriched teacher (``intra.weight>0``), the CE-only student (a teacher-kind run with the students'
architecture and ``intra.weight=0``) and the KD student of each teacher.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from intrakd.analysis.comparison import paired_interval
from intrakd.analysis.runfolders import RunRecord, find_runs, read_metrics
from intrakd.config import BAD_INPUT, ConfigError, intra_term_on

ROLES = ("vanilla", "enriched", "ce_only", "kd_vanilla", "kd_enriched")
PILOT_CRITERIA = {
    "vanilla_teacher_test_acc": ">= 50",
    "kd_vanilla_minus_ce_only": ">= 1.0",
    "gate_pass_rate_last_quarter": ">= 0.5",
    "vanilla_teacher_train_minus_test_acc": ">= 5",
    "self_negatives_per_anchor": "== 0",
}
"""What the pilot must show (docs/results.md): the protocol is in the regime that the comparison needs."""


def is_ce_only_student(run: RunRecord, student_models: set[Any]) -> bool:
    """Whether ``run`` is a student architecture trained alone: a teacher-kind run (cross-entropy
    only, no teacher) of one of the KD students' models."""
    return run.kind == "teacher" and run.config.get("model") in student_models


def assign_roles(runs: Sequence[RunRecord]) -> dict[str, dict[int, RunRecord]]:
    """``role -> seed -> run`` for the runs of one teacher comparison; a ``ConfigError`` naming the
    problem when a role is missing or two configurations claim it."""
    students = [r for r in runs if r.kind == "student"]
    student_models = {r.config.get("model") for r in students}
    if len(student_models) != 1:
        raise ConfigError(f"expected the KD students of one architecture, found {sorted(map(str, student_models))}")

    def role(run: RunRecord) -> str:
        if run.kind == "student":
            return "kd_enriched" if intra_term_on(run.config.get("teacher.intra.weight", 0)) else "kd_vanilla"
        if is_ce_only_student(run, student_models):
            return "ce_only"
        return "enriched" if intra_term_on(run.config.get("intra.weight", 0)) else "vanilla"

    table: dict[str, dict[int, RunRecord]] = {name: {} for name in ROLES}
    configs: dict[str, dict[str, Any]] = {}
    for run in runs:
        name = role(run)
        settings = {k: v for k, v in run.config.items() if k != "seed"}
        if configs.setdefault(name, settings) != settings:
            differ = sorted(k for k in settings.keys() | configs[name].keys()
                            if settings.get(k) != configs[name].get(k))
            raise ConfigError(f"two configurations of the {name} role (differing in {', '.join(differ[:4])}): "
                             "give the folders of one comparison only")
        table[name][run.seed] = run
    missing = [name for name in ROLES if not table[name]]
    if missing:
        raise ConfigError(f"no finished runs of the role(s) {', '.join(missing)}")
    return table


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Mean of ``a - b`` (paired) with its t confidence interval
    (:func:`~intrakd.analysis.comparison.paired_interval`)."""
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    low, high = paired_interval(a, b, confidence)
    ci95 = [None, None] if math.isnan(low) else [low, high]  # JSON has no NaN
    return {"mean": sum(diffs) / len(diffs), "ci95": ci95, "n": len(diffs)}


def last_quarter_mean(run: RunRecord, key: str) -> float:
    """Mean of an epoch metric over the last quarter of a run's epochs (at least one epoch)."""
    records = [r for r in read_metrics(run.path) if key in r]
    if not records:
        return math.nan
    tail = records[-max(1, len(records) // 4):]
    return sum(r[key] for r in tail) / len(tail)


def pilot_figures(table: dict[str, dict[int, RunRecord]], seeds: Sequence[int]) -> dict[str, float]:
    """The pilot's criteria (:data:`PILOT_CRITERIA`) measured over ``seeds``."""
    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    vanilla = [table["vanilla"][s] for s in seeds]
    enriched = [table["enriched"][s] for s in seeds]
    return {
        "vanilla_teacher_test_acc": mean([r.metrics["test_acc"] for r in vanilla]),
        "vanilla_teacher_train_acc": mean([r.metrics["train_acc"] for r in vanilla]),
        "kd_vanilla_minus_ce_only": mean([table["kd_vanilla"][s].metrics["test_acc"]
                                          - table["ce_only"][s].metrics["test_acc"] for s in seeds]),
        "gate_pass_rate_last_quarter": mean([last_quarter_mean(r, "pass_rate") for r in enriched]),
        "vanilla_teacher_train_minus_test_acc": mean([r.metrics["train_acc"] - r.metrics["test_acc"]
                                                      for r in vanilla]),
        "self_negatives_per_anchor": max(max((e.get("self_negatives", 0.0) for e in read_metrics(r.path)),
                                             default=math.nan) for r in enriched),
        "cache_own_entries_per_anchor_last_quarter": mean([last_quarter_mean(r, "cache_own_entries")
                                                           for r in enriched]),
    }


def criteria_met(figures: dict[str, float]) -> dict[str, bool]:
    """Whether each criterion of :data:`PILOT_CRITERIA` holds for the measured ``figures``."""
    met = {}
    for name, rule in PILOT_CRITERIA.items():
        op, threshold = rule.split()
        value = figures[name]
        met[name] = value >= float(threshold) if op == ">=" else value == float(threshold)
    return met


def soft_label_kl(logits_p: torch.Tensor, logits_q: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-image ``KL(softmax(p/T) || softmax(q/T))`` in nats."""
    log_p = F.log_softmax(logits_p.double() / temperature, dim=1)
    log_q = F.log_softmax(logits_q.double() / temperature, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def same_superclass_share(logits: torch.Tensor, labels: torch.Tensor, superclass: torch.Tensor,
                          temperature: float) -> tuple[float, float]:
    """(mean share of the off-target soft-label mass that falls on classes of the target's own
    superclass, the share a soft label spread evenly over the other classes would give)."""
    p = F.softmax(logits.double() / temperature, dim=1)
    same = superclass[None, :] == superclass[labels][:, None]
    same[torch.arange(len(labels)), labels] = False
    off_target = 1 - p.gather(1, labels[:, None]).squeeze(1)
    share = (p * same).sum(dim=1) / off_target.clamp_min(1e-12)
    chance = same.sum(dim=1).double() / (p.shape[1] - 1)
    return share.mean().item(), chance.mean().item()


def _superclasses(run: RunRecord) -> torch.Tensor | None:
    """The CIFAR-100 superclass of every class of a run (None for other datasets and superclass labels)."""
    from intrakd.data import cifar100_classes, resolve_cifar100_classes
    from intrakd.train import read_checkpoint

    data = read_checkpoint(run.path / "checkpoints" / "last.pt")["config"]["data"]
    if data.get("dataset") != "cifar100" or data.get("labels") == "coarse":  # coarse: classes are superclasses
        return None
    fine = resolve_cifar100_classes(data["root"], data["classes"]) if data.get("classes") else list(range(100))
    _, _, coarse_of = cifar100_classes(data["root"])
    return torch.tensor([coarse_of[c] for c in fine])


def teacher_diagnostics(table: dict[str, dict[int, RunRecord]], seeds: Sequence[int], split: str = "test",
                        temperature: float = 4.0) -> dict[str, Any]:
    """How far the enriched teacher's soft labels move from the vanilla teacher's of the same seed,
    against how far two vanilla seeds differ (seed noise), and where their off-target mass goes."""
    from intrakd.analysis.analyze import predict_checkpoint

    logits: dict[tuple[str, int], torch.Tensor] = {}
    labels = None
    for role, seed in itertools.product(("vanilla", "enriched"), seeds):
        pred, _ = predict_checkpoint(table[role][seed].path / "checkpoints" / "last.pt", split, device="cpu")
        logits[role, seed], labels = pred.logits, pred.labels
    kl_enriched = [soft_label_kl(logits["vanilla", s], logits["enriched", s], temperature).mean().item()
                   for s in seeds]
    kl_seeds = [soft_label_kl(logits["vanilla", a], logits["vanilla", b], temperature).mean().item()
                for a, b in itertools.pairwise(seeds)]
    result: dict[str, Any] = {
        "split": split, "temperature": temperature,
        "kl_vanilla_to_enriched_same_seed": kl_enriched,
        "kl_vanilla_to_vanilla_next_seed": kl_seeds,
    }
    superclass = _superclasses(table["vanilla"][seeds[0]])
    if superclass is not None and labels is not None:
        for role in ("vanilla", "enriched"):
            shares = [same_superclass_share(logits[role, s], labels, superclass, temperature) for s in seeds]
            result[f"same_superclass_share_{role}"] = [share for share, _ in shares]
            result["same_superclass_share_chance"] = shares[0][1]
    return result


def headline(paths: Sequence[str | Path], protocol: str, pilot_seeds: int = 3,
             diagnostics: bool = True) -> dict[str, Any]:
    """The comparison's headline (``docs/results/summary.json``) from the runs under ``paths``.

    Seeds are those that every role has finished; the pilot is the first ``pilot_seeds`` of them.
    """
    runs, _ = find_runs(paths)
    table = assign_roles(runs)
    seeds = sorted(set.intersection(*(set(by_seed) for by_seed in table.values())))
    if not seeds:
        raise ConfigError("no seed has finished runs of every role")

    def per_seed(role: str, metric: str = "test_acc") -> list[float]:
        return [table[role][s].metrics[metric] for s in seeds]

    pilot = pilot_figures(table, seeds[:pilot_seeds])
    summary: dict[str, Any] = {
        "protocol": protocol,
        "seeds": seeds,
        "teacher_test_acc": {"vanilla": per_seed("vanilla"), "enriched": per_seed("enriched")},
        "student_test_acc": {role: per_seed(role) for role in ("ce_only", "kd_vanilla", "kd_enriched")},
        "student_diff": paired_difference(per_seed("kd_enriched"), per_seed("kd_vanilla")),
        "teacher_diff": paired_difference(per_seed("enriched"), per_seed("vanilla")),
        "kd_vanilla_minus_ce_only": paired_difference(per_seed("kd_vanilla"), per_seed("ce_only")),
        "pilot": pilot,
        "pilot_seeds": seeds[:pilot_seeds],
        "pilot_criteria": PILOT_CRITERIA,
        "pilot_criteria_met": criteria_met(pilot),
    }
    if diagnostics:
        summary["diagnostics"] = teacher_diagnostics(table, seeds)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.evidence", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders or folders holding them")
    parser.add_argument("--out", required=True, metavar="JSON", help="the headline's file (docs/results/summary.json)")
    parser.add_argument("--protocol", default="", help="name of the protocol, recorded in the file")
    parser.add_argument("--pilot-seeds", type=int, default=3,
                        help="seeds the pilot criteria are measured on (default 3)")
    args = parser.parse_args(argv)
    try:
        summary = headline(args.runs, args.protocol, args.pilot_seeds)
    except BAD_INPUT as err:  # bad input; any other exception keeps its traceback
        print(f"evidence: {err}", file=sys.stderr)
        return 2
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    print(f"written: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
