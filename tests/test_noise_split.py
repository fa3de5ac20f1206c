"""experiments/noise_split.py: the noise split read from a sweep with several students per teacher."""

import pytest
import yaml

from experiments.noise_split import design, main
from intrakd.analysis.sweep import load_sweep, plan, run_sweep

SPEC = {
    "seeds": [0, 1],
    "common": {"device": "cpu", "data": {"dataset": "digits", "train_per_class": 10, "val_per_class": 5},
               "optim": {"epochs": 1, "milestones": [1]}},
    "teacher": {"config": {"model": "digits_cnn", "views": 2},
                "grid": {"intra.weight": [0, 0.02]}},
    "student": {"config": {"model": "digits_cnn_small"}, "seeds_per_teacher": 2},
}


def test_noise_split_of_a_sweep_with_two_students_per_teacher(tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"out": str(tmp_path / "runs"), **SPEC}))
    spec = load_sweep(path)
    jobs = plan(spec)
    run_sweep(spec, jobs, log=lambda _: None)
    assert main([str(tmp_path / "runs"), "--seeds", "0", "1", "--out", str(tmp_path / "split.json")]) == 0
    result = yaml.safe_load((tmp_path / "split.json").read_text())
    assert len(result["students_found"]) == 8 and len(result["teachers_found"]) == 8
    assert set(result["student_accuracy"]["vanilla"]) == {"seed0", "seed0-student1", "seed1", "seed1-student1"}
    for arm in ("vanilla", "enriched"):
        assert result["teacher_student_split"][arm]["teachers"] == 2
        assert result["teacher_student_split"][arm]["students"] == 4
        assert set(result["students_of_one_teacher"][arm]) == {"teacher seed0", "teacher seed1"}
    assert set(result["students_of_the_two_arms"]) == {"seed0", "seed0-student1", "seed1", "seed1-student1"}
    assert result["mean_difference_test_set_se"]["pairs"] == 4
    assert [row["students_per_teacher"] for row in result["design"]] == list(range(1, 9))
    assert all(row["difference_sd"] <= full["difference_sd"]
               for row, full in zip(result["design_without_flipping"], result["design"]))
    for part in ("test", "train"):
        groups = result["teacher_kl"][part]
        assert set(groups["same seed, enriched"]["pairs"]) == {"vanilla seed0 -> enriched seed0",
                                                                "vanilla seed1 -> enriched seed1"}
        assert set(groups["other seed, enriched"]["pairs"]) == {"vanilla seed0 -> enriched seed1",
                                                                 "vanilla seed1 -> enriched seed0"}
        assert set(groups["other seed, vanilla"]["pairs"]) == {"vanilla seed0 -> vanilla seed1",
                                                                "vanilla seed1 -> vanilla seed0"}
    assert capsys.readouterr().out.startswith("{")
    assert main([str(tmp_path / "nothing")]) == 2


def test_design_trades_teachers_for_students():
    split = {arm: {"teacher_variance": 0.25, "student_variance": 1.0} for arm in ("vanilla", "enriched")}
    rows = design(split, teacher_minutes=30.0, student_minutes=6.0, per_teacher=range(1, 5))
    # one student: SD sqrt(0.5 + 2) = 1.58; four: sqrt(0.5 + 0.5) = 1
    assert rows[0]["difference_sd"] == pytest.approx(2.5**0.5) and rows[3]["difference_sd"] == pytest.approx(1.0)
    pairs = [row["teacher_pairs"] for row in rows]
    assert pairs == sorted(pairs, reverse=True) and pairs[3] < pairs[0]
    # t(0.975, n - 1) x 1 / sqrt(n) <= 0.5 first at n = 18
    assert pairs[3] == 18
    assert rows[3]["thread_hours"] == pytest.approx(18 * 2 * (30 + 4 * 6) / 60)
    # a negative teacher part (chance) counts as none
    assert design({a: {"teacher_variance": -1.0, "student_variance": 1.0} for a in "ab"}, 1, 1,
                  range(2, 3))[0]["difference_sd"] == pytest.approx(1.0)
