"""The headline of a teacher comparison: roles, paired differences, pilot criteria, diagnostics."""

import json
import math

import pytest
import torch
import yaml
from scipy import stats

from experiments.evidence import (
    assign_roles,
    criteria_met,
    headline,
    paired_difference,
    same_superclass_share,
    soft_label_kl,
)
from intrakd.analysis.runfolders import find_runs

SEEDS = (0, 1, 2, 3)
TEST_ACC = {  # role -> per-seed test accuracy
    "vanilla": [60.0, 61.0, 59.0, 60.5], "enriched": [60.5, 60.0, 59.5, 61.0],
    "ce_only": [50.0, 51.0, 50.5, 49.0], "kd_vanilla": [52.0, 52.5, 51.0, 51.5],
    "kd_enriched": [52.5, 53.5, 51.0, 52.5],
}


def _run(folder, config, test_acc, train_acc=None, epochs=None):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "summary.json").write_text(json.dumps({"final_acc": test_acc, "best_acc": test_acc,
                                                     "eval_split": "val"}))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in (epochs or [{"epoch": 1}])))
    (folder / "eval_test.json").write_text(json.dumps({"acc": test_acc}))
    if train_acc is not None:
        (folder / "eval_train.json").write_text(json.dumps({"acc": train_acc}))


def _teacher(model, weight, seed, views=2):
    return {"command": "train-teacher", "model": model, "seed": seed, "views": views,
            "intra": {"weight": weight, "delta": 0.5, "exclude_self": True}}


@pytest.fixture
def comparison(tmp_path):
    """A finished comparison over four seeds, laid out as ``intrakd sweep`` writes it."""
    for seed in SEEDS:
        i = SEEDS.index(seed)
        for role, weight in (("vanilla", 0.0), ("enriched", 0.02)):
            # 8 epochs: the last quarter (epochs 7, 8) passes 0.6 and 0.8 of the samples
            epochs = [{"epoch": e, "pass_rate": 0.1 * e, "self_negatives": 0.0, "cache_own_entries": 2.0}
                      for e in range(1, 9)] if weight else None
            teacher = tmp_path / "teachers" / role / f"seed{seed}"
            _run(teacher, _teacher("resnet20", weight, seed), TEST_ACC[role][i], TEST_ACC[role][i] + 10, epochs)
            student = {"command": "distill", "model": "resnet8", "seed": seed,
                       "teacher": str(teacher / "checkpoints" / "last.pt")}
            _run(tmp_path / "students" / role / f"seed{seed}", student, TEST_ACC[f"kd_{role}"][i])
        _run(tmp_path / "teachers" / "ce" / f"seed{seed}", _teacher("resnet8", 0.0, seed, views=1),
             TEST_ACC["ce_only"][i])
    return tmp_path


def test_roles_are_told_apart_by_their_settings(comparison):
    runs, _ = find_runs([comparison])
    table = assign_roles(runs)
    for role, by_seed in table.items():
        assert sorted(by_seed) == list(SEEDS)
        assert [by_seed[s].metrics["test_acc"] for s in SEEDS] == TEST_ACC[role]


def test_two_configurations_of_one_role_are_refused(comparison):
    _run(comparison / "teachers" / "other" / "seed0", {**_teacher("resnet20", 0.05, 0)}, 60.0)
    runs, _ = find_runs([comparison])
    with pytest.raises(ValueError, match="two configurations of the enriched role.*intra.weight"):
        assign_roles(runs)


def test_paired_difference_is_scipys_paired_t_interval():
    a, b = [52.5, 53.5, 51.0, 52.5], [52.0, 52.5, 51.0, 51.5]
    got = paired_difference(a, b)
    diffs = [x - y for x, y in zip(a, b)]
    mean = sum(diffs) / 4
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 3)
    half = stats.t.ppf(0.975, 3) * sd / 2
    assert got["mean"] == pytest.approx(mean) and got["n"] == 4
    assert got["ci95"] == pytest.approx([mean - half, mean + half])
    assert paired_difference([1.0, 2.0], [0.0, 1.0])["ci95"] == [1.0, 1.0]  # no spread
    assert paired_difference([1.0], [0.0])["ci95"] == [None, None]  # JSON has no NaN


def test_headline_holds_the_documented_fields(comparison):
    summary = headline([comparison], "toy", pilot_seeds=3, diagnostics=False)
    assert summary["protocol"] == "toy" and summary["seeds"] == list(SEEDS)
    assert summary["teacher_test_acc"] == {"vanilla": TEST_ACC["vanilla"], "enriched": TEST_ACC["enriched"]}
    assert summary["student_test_acc"]["kd_enriched"] == TEST_ACC["kd_enriched"]
    assert summary["student_diff"]["mean"] == pytest.approx((0.5 + 1.0 + 0.0 + 1.0) / 4)
    pilot = summary["pilot"]
    assert pilot["vanilla_teacher_test_acc"] == pytest.approx(60.0)  # mean of seeds 0-2
    assert pilot["kd_vanilla_minus_ce_only"] == pytest.approx((2.0 + 1.5 + 0.5) / 3)
    assert pilot["gate_pass_rate_last_quarter"] == pytest.approx(0.75)
    assert pilot["vanilla_teacher_train_minus_test_acc"] == pytest.approx(10.0)
    assert pilot["self_negatives_per_anchor"] == 0.0
    assert summary["pilot_criteria_met"] == {
        "vanilla_teacher_test_acc": True, "kd_vanilla_minus_ce_only": True, "gate_pass_rate_last_quarter": True,
        "vanilla_teacher_train_minus_test_acc": True, "self_negatives_per_anchor": True}
    assert not criteria_met({**pilot, "kd_vanilla_minus_ce_only": 0.9})["kd_vanilla_minus_ce_only"]


def test_the_command_writes_the_summary(comparison, tmp_path, monkeypatch, capsys):
    from experiments import evidence

    monkeypatch.setattr(evidence, "teacher_diagnostics", lambda table, seeds: {"stub": True})
    out = tmp_path / "summary.json"
    assert evidence.main([str(comparison), "--out", str(out), "--protocol", "toy"]) == 0
    written = json.loads(out.read_text())
    assert written["protocol"] == "toy" and written["diagnostics"] == {"stub": True}
    assert evidence.main([str(tmp_path / "nothing"), "--out", str(tmp_path / "x.json")]) == 2
    assert not (tmp_path / "x.json").exists() and "evidence: " in capsys.readouterr().err


def test_soft_label_kl_and_superclass_share_on_known_answers():
    p = torch.tensor([[2.0, 0.0, 0.0, 0.0]])
    assert soft_label_kl(p, p, 4.0).item() == pytest.approx(0.0)
    q = torch.zeros(1, 4)
    probs = torch.softmax(p.double() / 4, dim=1)[0]
    want = (probs * (probs / 0.25).log()).sum().item()
    assert soft_label_kl(p, q, 4.0).item() == pytest.approx(want)
    # classes 0, 1 in superclass 0; classes 2, 3 in superclass 1; target 0
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]]))
    share, chance = same_superclass_share(logits, torch.tensor([0]), torch.tensor([0, 0, 1, 1]), 1.0)
    assert share == pytest.approx(0.3 / 0.6) and chance == pytest.approx(1 / 3)


def test_superclass_of_each_class_is_only_known_for_fine_cifar_labels(tmp_path):
    import pickle
    from types import SimpleNamespace

    from experiments.evidence import _superclasses

    folder = tmp_path / "cifar-100-python"  # fine class c in superclass c % 20
    folder.mkdir()
    for split in ("train", "test"):
        (folder / split).write_bytes(pickle.dumps({"fine_labels": list(range(100)),
                                                   "coarse_labels": [c % 20 for c in range(100)]}))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"class{c}" for c in range(100)],
                                                "coarse_label_names": [f"super{g}" for g in range(20)]}))
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    run = SimpleNamespace(path=tmp_path / "run")
    for data, want in (({"classes": [21, 3, 40]}, [1, 3, 0]), ({"classes": None}, [c % 20 for c in range(100)]),
                       ({"classes": None, "labels": "coarse"}, None), ({"dataset": "digits"}, None)):
        data = {"dataset": "cifar100", "root": str(tmp_path), **data}
        torch.save({"model": {}, "config": {"data": data}}, run.path / "checkpoints" / "last.pt")
        got = _superclasses(run)
        assert (got if got is None else got.tolist()) == want, data
