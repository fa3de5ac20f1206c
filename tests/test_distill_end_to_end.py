"""Every distillation method end to end on the embedded digits: one epoch each from a one-epoch
teacher, through the same trainer, configuration and run folder as any other run."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from test_resume import assert_same_run, crash_then_resume

from intrakd.cli import main
from intrakd.config import StudentConfig, TeacherConfig, load_config
from intrakd.data import build_datasets
from intrakd.models import create_model
from intrakd.models.checkpoint import read_checkpoint
from intrakd.objectives import create_distiller, distill_recipe
from intrakd.runs import distill, train_teacher

COMMON = {"device": "cpu", "data": {"dataset": "digits", "train_per_class": 50, "eval_per_class": 20},
          "optim": {"epochs": 1, "milestones": [1]}}
TERMS = {"kd": {"ce", "kd"}, "dkd": {"ce", "dkd"}, "mlkd": {"ce", "mlkd_instance", "mlkd_batch", "mlkd_class"},
         "crd": {"ce", "crd"}, "fitnet": {"ce", "fitnet"},
         "rkd": {"ce", "rkd_distance", "rkd_angle"}, "at": {"ce", "at"}, "sp": {"ce", "sp"}, "pkt": {"ce", "pkt"},
         "vid": {"ce", "vid"}, "cc": {"ce", "cc"}, "nst": {"ce", "nst"}, "kdsvd": {"ce", "kdsvd"},
         "ofd": {"ce", "ofd"}, "reviewkd": {"ce", "reviewkd"}}
DIGITS_OVERRIDES = {"fitnet": ["distill.fitnet.hint_layer=1"],  # the digits CNNs have 2 stage features
                    "kdsvd": ["distill.kdsvd.first_stage=0"]}  # KDSVD relates consecutive stages: needs both


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    base = {**COMMON, "model": "digits_cnn", "views": 1, "intra": {"weight": 0.0}}
    cfg = load_config(TeacherConfig, base=base)
    train_teacher(cfg, out)
    return out / "checkpoints" / "last.pt"


def student_config(teacher_checkpoint, method: str, extra: list[str] | None = None) -> StudentConfig:
    base = {**COMMON, "model": "digits_cnn_small", "teacher": str(teacher_checkpoint)}
    return load_config(StudentConfig, base=base,
                       overrides=[f"distill.method={method}", *DIGITS_OVERRIDES.get(method, []),
                                  *(extra or [])])


@pytest.mark.parametrize("method", sorted(TERMS))
def test_every_method_trains_one_epoch(teacher_checkpoint, tmp_path, method):
    summary = distill(student_config(teacher_checkpoint, method), tmp_path)
    assert summary["epochs"] == 1 and 0 <= summary["final_acc"] <= 100
    (record,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert TERMS[method] <= record.keys()
    assert all(record[k] == record[k] and abs(record[k]) < 1e6 for k in TERMS[method])  # finite
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())["distill"]
    assert written["method"] == method and written["ce_weight"] == distill_recipe(method)["ce_weight"]


@pytest.mark.parametrize("method", ["dkd", "crd", "mlkd"])
def test_methods_reading_labels_or_two_views_train_on_mixed_batches(teacher_checkpoint, tmp_path, method):
    """MixUp and CutMix: DKD's target class and CRD's other-class negatives take each mixed image's dominant
    class, MLKD's weak and strong views are mixed alike; every term stays finite."""
    summary = distill(student_config(teacher_checkpoint, method, ["data.mixup=0.2", "data.cutmix=1.0"]), tmp_path)
    assert summary["epochs"] == 1
    (record,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(record[k] == record[k] and abs(record[k]) < 1e6 for k in TERMS[method])


def test_crd_memory_is_checkpointed_and_restores(teacher_checkpoint, tmp_path):
    cfg = student_config(teacher_checkpoint, "crd", ["distill.crd.num_negatives=256"])
    distill(cfg, tmp_path)
    state = read_checkpoint(tmp_path / "checkpoints" / "last.pt")["objective"]
    train_set, _, _ = build_datasets(cfg.data)
    assert state["memory_student"].shape == (len(train_set), 128) and state["z_student"] > 0
    teacher = create_model("digits_cnn", num_classes=10).eval()
    fresh = create_distiller(cfg.distill, create_model("digits_cnn_small", num_classes=10), teacher, train_set)
    assert not torch.equal(fresh.memory_teacher, state["memory_teacher"])
    fresh.load_state_dict(state)
    for name in ("memory_student", "memory_teacher", "z_student", "z_teacher", "embed_student.weight"):
        assert torch.equal(fresh.state_dict()[name], state[name])


def test_cli_one_line_method_switch_and_dkd_warmup_per_epoch(teacher_checkpoint, tmp_path):
    code = main(["distill", "--teacher", str(teacher_checkpoint), "--out", str(tmp_path), "device=cpu",
                 "data.dataset=digits", "data.train_per_class=50", "data.eval_per_class=20",
                 "model=digits_cnn_small", "optim.epochs=2", "optim.milestones=[2]",
                 "distill.method=dkd", "distill.dkd.warmup_epochs=4"])
    assert code == 0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["dkd_warmup"] for r in records] == [0.25, 0.5]  # the trainer calls set_epoch
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())["distill"]
    assert (written["ce_weight"], written["kd_weight"], written["dkd"]["nckd_weight"]) == (1.0, 0.0, 8.0)


def test_methods_command_lists_every_method_with_settings(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for method in TERMS:
        assert f"distill.method={method} " in out
    assert "distill.dkd.nckd_weight=8.0" in out and "distill.crd.num_negatives=16384" in out
    assert "distill.rkd.distance_weight=25.0" in out and "distill.fitnet.hint_weight=100.0" in out


@pytest.mark.slow
def test_ofd_with_its_teacher_on_batch_statistics_resumes_exactly(teacher_checkpoint, tmp_path, monkeypatch):
    """OFD runs its teacher in training mode (mdistiller's OFD): a crashed run still resumes to the same bytes,
    and the teacher it distils from keeps the statistics it was loaded with."""
    args = ["--teacher", str(teacher_checkpoint), "device=cpu", "data.dataset=digits", "data.train_per_class=50",
            "data.eval_per_class=20", "model=digits_cnn_small", "optim.epochs=2", "optim.milestones=[1]",
            "distill.method=ofd", "checkpoint.every_steps=3"]
    assert main(["distill", "--out", str(tmp_path / "straight"), *args]) == 0
    crash_then_resume(monkeypatch, "distill", tmp_path / "crashed", args, step=10)
    assert_same_run(tmp_path / "straight", tmp_path / "crashed")
