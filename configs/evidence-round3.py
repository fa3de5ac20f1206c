"""Figures of docs/results.md's third-round corrections, recomputed from docs/results/summary.json.

Run: PYTHONPATH=src python configs/evidence-round3.py
"""

import csv
import json
import math
from pathlib import Path

from scipy import stats

from intrakd.analysis.comparison import (
    mean_std,
    paired_interval,
    paired_power,
    sd_interval,
    seeds_for_halfwidth,
    seeds_for_power,
    welch_interval,
)

s = json.loads(Path("docs/results/summary.json").read_text())
kv, ke, ce = (s["student_test_acc"][k] for k in ("kd_vanilla", "kd_enriched", "ce_only"))
d = [e - v for e, v in zip(ke, kv)]
m, sd = mean_std(d)
print(f"students: paired {m:+.2f} {paired_interval(ke, kv)}  SD of differences {sd:.2f}")
print(f"students: Welch {welch_interval(ke, kv)}")
print(f"correlation between arms r = {stats.pearsonr(kv, ke)[0]:+.2f}")
tv, te = s["teacher_test_acc"]["vanilla"], s["teacher_test_acc"]["enriched"]
print(f"teachers: correlation r = {stats.pearsonr(tv, te)[0]:+.2f}, Welch {welch_interval(te, tv)}")
print(f"without seed 0: {mean_std(d[1:])[0]:+.2f} {paired_interval(ke[1:], kv[1:])}; seed 0 difference {d[0]:+.2f}; "
      f"seed 0 vanilla student {kv[0]} = max {max(kv)}")
lo, hi = sd_interval(sd, len(d))
print(f"SD {sd:.2f}, 95% chi-square interval [{lo:.2f}, {hi:.2f}]")
print(f"seeds for half-width 0.5: {seeds_for_halfwidth(sd, 0.5)} (SD's interval: {seeds_for_halfwidth(lo, 0.5)}"
      f"-{seeds_for_halfwidth(hi, 0.5)})")
print(f"seeds for 80% power against 0.5: {seeds_for_power(0.5, sd)}")
for eff in (0.5, 1.0, 1.5):
    print(f"power now (n={len(d)}) against {eff}: {paired_power(eff, sd, len(d)):.2f}")
# binomial SE of one accuracy on the 2,000 test images against the between-seed SD of each arm
for name, arm in (("kd_vanilla", kv), ("kd_enriched", ke), ("ce_only", ce), ("vanilla teacher", tv), ("enriched teacher", te)):
    p = mean_std(arm)[0] / 100
    b = 100 * math.sqrt(p * (1 - p) / 2000)
    print(f"{name}: between-seed SD {mean_std(arm)[1]:.2f}, binomial SE on 2,000 images {b:.2f}, "
          f"ratio {b / mean_std(arm)[1]:.2f}")


rows = {r["configuration"]: r for r in csv.DictReader(Path("docs/results/main.csv").read_text().splitlines()) if r["kind"] == "teacher"}
van, enr = rows["intra.weight=0.0, model=wrn_16_2, views=2"], rows["intra.weight=0.02, model=wrn_16_2, views=2"]
se = math.sqrt(float(van["test_inter_class_distance_std"]) ** 2 / 8 + float(enr["test_inter_class_distance_std"]) ** 2 / 8)
gap = float(van["test_inter_class_distance_mean"]) - float(enr["test_inter_class_distance_mean"])
print(f"inter-class distance fell by {gap:.4f} = {gap / se:.1f} standard errors of the unpaired difference")
for r in csv.DictReader(Path("docs/results/ablations.csv").read_text().splitlines()):  # lambda 0.2: the two seeds from the mean and the t interval
    if r.get("diff_test_acc") and r["test_acc_n"] == "2" and "weight=0.2" in r["configuration"]:
        m, h = float(r["diff_test_acc"]), (float(r["diff_test_acc_ci_high"]) - float(r["diff_test_acc_ci_low"])) / 2
        e = h / stats.t.ppf(0.975, 1)
        print(f"lambda 0.2 {r['kind']}: mean {m:+.2f}, seeds {m - e:+.2f} and {m + e:+.2f}")
