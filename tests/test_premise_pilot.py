"""experiments/premise_pilot.py: the premise pilot's criteria read from a sweep's run folders."""

import json
from pathlib import Path

from experiments.premise_pilot import CE_ONLY, collect, main, table


def _run(folder: Path, **splits: dict) -> None:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text("{}")
    for split, figures in splits.items():
        (folder / f"eval_{split}.json").write_text(json.dumps(figures))


def _teacher(folder: Path, train_acc: float, mass: float) -> None:
    _run(folder, train={"acc": train_acc, "soft_off_target_mass": mass, "temperature": 4.0},
         val={"acc": 50.0}, test={"acc": 50.0, "soft_off_target_mass": 0.8, "images": 5000})


def test_criteria_are_checked_per_vanilla_arm_and_unfinished_arms_are_missing(tmp_path):
    _run(tmp_path / "teachers" / CE_ONLY / "seed0", val={"acc": 45.0}, test={"acc": 45.0})
    _teacher(tmp_path / "teachers" / "views=1,intra.weight=0" / "seed0", 99.96, 0.575)
    _run(tmp_path / "students" / "views=1,intra.weight=0" / "base" / "seed0", val={"acc": 46.5}, test={"acc": 47.0})
    _teacher(tmp_path / "teachers" / "intra.weight=0" / "seed0", 99.5, 0.35)  # no student yet
    result = collect(tmp_path, 0)
    one_view = result["criteria"]["one-view vanilla"]
    assert one_view["train_acc"]["met"] and not one_view["train_off_target_mass"]["met"]
    assert one_view["kd_minus_ce_only_val"]["value"] == 1.5 and one_view["kd_minus_ce_only_val"]["met"]
    assert "kd_minus_ce_only_val" not in result["criteria"]["two-view vanilla"]
    assert not result["complete"] and not result["all_criteria_met"]
    assert "enriched, lambda 0.05 | not finished" in table(result)


def test_into_stores_the_figures_beside_what_the_file_holds(tmp_path, capsys):
    _run(tmp_path / "runs" / "teachers" / CE_ONLY / "seed0", val={"acc": 45.0}, test={"acc": 45.0})
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"kept": 1}))
    assert main([str(tmp_path / "runs"), "--into", str(summary)]) == 0
    stored = json.loads(summary.read_text())
    assert stored["kept"] == 1 and stored["premise_pilot"]["arms"]["CE-only resnet8"]["val_acc"] == 45.0
    assert capsys.readouterr().out.startswith("| vanilla teacher |")
    assert main([str(tmp_path / "absent")]) == 2
