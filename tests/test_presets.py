"""Named recipes: every preset resolves to a valid configuration with the values of METHOD.md, and
the CLI lists them and runs one with overrides on top."""

import re
from pathlib import Path

import pytest
import torch
import yaml

from intrakd.cli import main
from intrakd.config import StudentConfig, TeacherConfig, load_config, to_dict
from intrakd.models import create_model, list_models
from intrakd.objectives import (
    TrainSetInfo,
    create_distiller,
    differences_table,
    list_distillers,
    methods_for_pair,
    methods_table,
    reference_of,
)
from intrakd.presets import Published, all_presets, get_preset, list_presets, preset_values, presets_table

# METHOD.md's CIFAR-100 pairs and published top-1 (teacher / student alone / KD)
CIFAR100_PAIRS = [
    ("resnet56", "resnet20"), ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_16_2"),
    ("wrn_40_2", "wrn_40_1"), ("vgg13", "vgg8"), ("vgg13", "MobileNetV2"), ("ResNet50", "MobileNetV2"),
    ("resnet32x4", "ShuffleV1"), ("resnet32x4", "ShuffleV2"), ("wrn_40_2", "ShuffleV1"),
]
PUBLISHED = {
    ("resnet32x4", "resnet8x4"): (79.42, 72.50, 73.33), ("wrn_40_2", "wrn_16_2"): (75.61, 73.26, 74.92),
    ("resnet56", "resnet20"): (72.34, 69.06, 70.66), ("vgg13", "vgg8"): (74.64, 70.36, 72.98),
}


@pytest.mark.parametrize("name", list(all_presets()))
def test_every_preset_resolves_to_a_valid_configuration(name):
    preset = all_presets()[name]
    cfg = preset.config()
    assert isinstance(cfg, TeacherConfig if preset.kind == "teacher" else StudentConfig)
    assert cfg.model in list_models()
    assert preset.values["data"]["dataset"] == cfg.data.dataset
    if preset.kind == "teacher":
        assert name.endswith(("/teacher", "/teacher-vanilla")) and "model" in preset.values
        assert cfg.views == 2  # both teachers see the same two views
        assert (cfg.intra.weight > 0) == name.endswith("/teacher")  # enriched / vanilla
    else:
        assert cfg.teacher_model in list_models()
        if name.endswith("/kd"):
            assert cfg.teacher is None  # the checkpoint comes from --teacher
        else:  # method presets read the checkpoint of their teacher preset's default run folder
            assert name.endswith(("-vanilla", "-enriched")) and cfg.teacher.endswith("/checkpoints/best.pt")


def test_cifar100_pairs_and_recipe():
    for teacher, student in CIFAR100_PAIRS:
        t = get_preset(f"cifar100/{teacher}-{student}/teacher", "teacher").config()
        s = get_preset(f"cifar100/{teacher}-{student}/kd", "distill").config()
        assert (t.model, s.model, s.teacher_model) == (teacher, student, teacher)
        for cfg in (t, s):
            assert cfg.data.dataset == "cifar100" and cfg.data.batch_size == 64
            assert (cfg.optim.epochs, cfg.optim.momentum, cfg.optim.weight_decay) == (240, 0.9, 5e-4)
            assert cfg.optim.milestones == [150, 180, 210] and cfg.optim.lr_decay == 0.1
        assert t.optim.lr == 0.05
        assert s.optim.lr == (0.01 if student in ("MobileNetV2", "ShuffleV1", "ShuffleV2") else 0.05)
        distill = s.distill
        assert (distill.method, distill.temperature, distill.ce_weight, distill.kd_weight) == ("kd", 4, 0.1, 0.9)
    from intrakd.objectives import learned_temperature_methods, list_temperatures, logit_standardized_methods

    names = {p.name for p in list_presets() if p.name.startswith("cifar100/")}
    # enriched + vanilla teacher, KD, and every method that accepts the pair (and its logit-standardised
    # recipe, and its recipe with each learned temperature) with either teacher
    methods = [len(methods_for_pair(*pair)) + len(set(logit_standardized_methods()) & set(methods_for_pair(*pair)))
               + len(list_temperatures()) * len(set(learned_temperature_methods()) & set(methods_for_pair(*pair)))
               for pair in CIFAR100_PAIRS]
    assert len(names) == sum(3 + 2 * count for count in methods)


def test_published_accuracies_only_where_method_md_gives_them():
    for teacher, student in CIFAR100_PAIRS:
        for suffix in ("teacher", "kd"):
            published = all_presets()[f"cifar100/{teacher}-{student}/{suffix}"].published
            expected = PUBLISHED.get((teacher, student))
            assert published == (Published(*expected) if expected else None)
    assert all(p.published is None for p in list_presets() if not p.name.startswith("cifar100/"))


def test_tiny_imagenet_and_imagenet_recipes():
    for student in ("MobileNetV2", "ShuffleV2"):
        s = get_preset(f"tiny_imagenet/ResNet18-{student}/kd").config()
        assert (s.model, s.teacher_model, s.data.dataset) == (student, "ResNet18", "tiny_imagenet")
        assert (s.optim.epochs, s.optim.lr, s.optim.milestones, s.data.batch_size) == (200, 0.2, [60, 120, 160], 256)
        assert get_preset(f"tiny_imagenet/ResNet18-{student}/teacher").config().model == "ResNet18"
    for label, teacher, student in (("resnet34-resnet18", "imagenet_resnet34", "imagenet_resnet18"),
                                    ("resnet50-mobilenetv1", "imagenet_resnet50", "imagenet_mobilenet_v1")):
        s = get_preset(f"imagenet/{label}/kd").config()
        assert (s.model, s.teacher_model, s.data.dataset, s.data.image_size) == (student, teacher, "imagenet", 224)
        assert (s.distill.temperature, s.distill.ce_weight, s.distill.kd_weight) == (1.0, 0.5, 0.5)
        assert (s.optim.epochs, s.optim.lr, s.optim.weight_decay, s.optim.milestones, s.data.batch_size) == (
            100, 0.1, 1e-4, [30, 60, 90], 256)
        assert get_preset(f"imagenet/{label}/teacher").config().model == teacher


def test_preset_values_are_copies():
    values = preset_values("cifar100/vgg13-vgg8/kd", "distill")
    values["optim"]["lr"] = 9.0
    assert all_presets()["cifar100/vgg13-vgg8/kd"].values["optim"]["lr"] == 0.05


def test_presets_command_lists_every_preset_with_key_settings(capsys):
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["NAME", "KIND", "MODEL"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == set(all_presets())
    assert rows["cifar100/resnet32x4-resnet8x4/kd"].split()[1:8] == [
        "distill", "resnet8x4", "resnet32x4", "240", "64", "0.05", "4"]

    def published(name: str) -> list[str]:  # the published teacher / student and method columns
        return re.split(r"\s{2,}", rows[name])[8:10]

    assert published("cifar100/resnet32x4-resnet8x4/kd") == ["79.42 / 72.50", "73.33"]
    assert rows["cifar100/vgg13-MobileNetV2/kd"].split()[6] == "0.01"
    assert published("cifar100/vgg13-MobileNetV2/kd") == ["n/a", "n/a"]
    # the method's own published top-1, where its paper gives one for the pair
    assert published("cifar100/resnet32x4-resnet8x4/dist-vanilla") == ["79.42 / 72.50", "76.31"]
    assert rows["cifar100/resnet32x4-resnet8x4/kd-ctkd-enriched"].split()[7:10] == ["ctkd", "/", "0.1"]
    assert published("cifar100/resnet32x4-resnet8x4/kd-ctkd-enriched")[1] == "73.39"
    assert published("cifar100/resnet32x4-resnet8x4/dkd-ctkd-vanilla")[1] == "n/a"
    # a method with a pre-training stage: its epochs, then the main stage's
    assert rows["cifar100/resnet32x4-resnet8x4/ab-vanilla"].split()[4] == "30+240"


def test_presets_command_shows_one_in_full(capsys):
    assert main(["presets", "cifar100/wrn_40_2-wrn_16_2/kd"]) == 0
    out = capsys.readouterr().out
    assert "# published top-1 teacher / student / KD: 75.61 / 73.26 / 74.92" in out
    assert yaml.safe_load(out) == to_dict(all_presets()["cifar100/wrn_40_2-wrn_16_2/kd"].config())


@pytest.fixture
def captured(monkeypatch):
    """Replace the runs with functions that record the configuration they are given."""
    seen = {}

    def record(cfg, out, overwrite=False, resume=False):
        seen["cfg"] = cfg
        return {}

    monkeypatch.setattr("intrakd.runs.train_teacher", record)
    monkeypatch.setattr("intrakd.runs.distill", record)
    return seen


def test_preset_is_the_base_and_config_and_overrides_apply_on_top(captured, tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("optim:\n  epochs: 30\n  lr: 0.2\nintra:\n  delta: 0.3\n")
    assert main(["train-teacher", "--preset", "cifar100/resnet56-resnet20/teacher", "--config", str(config),
                 "--data-root", "/data", "optim.lr=0.1", "--out", str(tmp_path / "t")]) == 0
    cfg = captured["cfg"]
    assert (cfg.model, cfg.data.dataset, cfg.data.root) == ("resnet56", "cifar100", "/data")
    assert (cfg.optim.epochs, cfg.optim.lr, cfg.intra.delta, cfg.intra.weight) == (30, 0.1, 0.3, 0.02)
    assert main(["train-teacher", "--preset", "cifar100/resnet56-resnet20/teacher", "--vanilla",
                 "--out", str(tmp_path / "t")]) == 0
    assert captured["cfg"].intra.weight == 0
    assert main(["distill", "--preset", "imagenet/resnet34-resnet18/kd", "--teacher", "resnet34.pth",
                 "data.root=/imagenet", "--out", str(tmp_path / "s")]) == 0
    cfg = captured["cfg"]
    assert (cfg.teacher, cfg.teacher_model, cfg.model) == ("resnet34.pth", "imagenet_resnet34", "imagenet_resnet18")
    assert (cfg.distill.temperature, cfg.data.root) == (1.0, "/imagenet")


def test_preset_errors(captured, capsys):
    assert main(["train-teacher", "--preset", "cifar100/nothing/teacher"]) == 2
    assert "unknown preset 'cifar100/nothing/teacher'; `intrakd presets` lists them" in capsys.readouterr().err
    assert main(["train-teacher", "--preset", "cifar100/vgg13-vgg8/kd"]) == 2
    assert ("preset 'cifar100/vgg13-vgg8/kd' is a distill recipe: use it with "
            "`intrakd distill --preset cifar100/vgg13-vgg8/kd`") in capsys.readouterr().err
    assert main(["distill", "--preset", "cifar100/vgg13-vgg8/teacher"]) == 2
    assert "is a teacher recipe: use it with `intrakd train-teacher" in capsys.readouterr().err
    assert main(["distill", "--preset", "cifar100/vgg13-vgg8/kd", "optim.lrr=1"]) == 2
    assert "unknown config key optim.lrr" in capsys.readouterr().err
    assert "cfg" not in captured


def test_every_method_has_a_vanilla_and_an_enriched_teacher_preset():
    from intrakd.presets import default_run_dir

    for teacher, student in CIFAR100_PAIRS:
        base = f"cifar100/{teacher}-{student}"
        assert all_presets()[f"{base}/teacher-vanilla"].values["intra"]["weight"] == 0.0
        assert all_presets()[f"{base}/teacher-vanilla"].values["views"] == 2
        for method in methods_for_pair(teacher, student):
            vanilla = all_presets()[f"{base}/{method}-vanilla"].values
            enriched = all_presets()[f"{base}/{method}-enriched"].values
            assert enriched["teacher"] == f"{default_run_dir(base + '/teacher')}/checkpoints/best.pt"
            assert vanilla["teacher"] == f"{default_run_dir(base + '/teacher-vanilla')}/checkpoints/best.pt"
            assert {k: v for k, v in vanilla.items() if k != "teacher"} == \
                   {k: v for k, v in enriched.items() if k != "teacher"}
            assert vanilla["distill"]["method"] == method


@pytest.mark.slow
@pytest.mark.parametrize(("teacher", "student"), CIFAR100_PAIRS, ids=["-".join(p) for p in CIFAR100_PAIRS])
def test_a_method_has_presets_for_exactly_the_pairs_it_can_distil(teacher, student):
    """FSP needs the same stage channels in both models: no presets (and a refusal) for other pairs;
    DeiT needs a ViT student (no zoo pair has one); every other method accepts every pair."""
    accepted = methods_for_pair(teacher, student)
    assert set(list_distillers()) - set(accepted) <= {"fsp", "deit"}
    assert "deit" not in accepted
    assert (f"cifar100/{teacher}-{student}/fsp-vanilla" in all_presets()) == ("fsp" in accepted)
    cfg = load_config(StudentConfig, overrides=["distill.method=fsp"])
    models = [create_model(name, num_classes=100) for name in (student, teacher)]
    info = TrainSetInfo(100, torch.arange(200) % 100, (3, 32, 32))
    if "fsp" in accepted:
        create_distiller(cfg.distill, *models, info)
    else:
        with pytest.raises(ValueError, match="the same stage channels"):
            create_distiller(cfg.distill, *models, info)


def test_dkd_preset_uses_the_dkd_recipe_not_kd_weights():
    from intrakd.presets import get_preset

    cfg = get_preset("cifar100/resnet32x4-resnet8x4/dkd-enriched").config()
    assert (cfg.distill.method, cfg.distill.ce_weight, cfg.distill.kd_weight) == ("dkd", 1.0, 0.0)
    assert cfg.teacher == "runs/cifar100/resnet32x4-resnet8x4/teacher/checkpoints/best.pt"


def test_preset_run_goes_to_runs_preset_name(captured, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    seen_out = {}
    import intrakd.runs

    def record(cfg, out, overwrite=False, resume=False):
        seen_out["out"] = out
        return {}

    monkeypatch.setattr(intrakd.runs, "train_teacher", record)
    assert main(["train-teacher", "--preset", "cifar100/resnet56-resnet20/teacher-vanilla"]) == 0
    assert seen_out["out"] == "runs/cifar100/resnet56-resnet20/teacher-vanilla"


def test_the_methods_page_holds_the_generated_table():
    page = (Path(__file__).resolve().parents[1] / "docs" / "methods.md").read_text()
    assert methods_table() in page, "docs/methods.md is out of date: paste `intrakd methods --markdown` into it"
    assert differences_table() in page, "docs/methods.md is out of date: paste `intrakd methods --markdown` into it"


def test_every_method_declares_its_reference_code():
    for name in list_distillers():
        reference = reference_of(name)
        assert reference.reference, name
        assert all(d.what and d.why and d.effect for d in reference.differences), name
    assert differences_table().count("| none |") == sum(not reference_of(n).differences for n in list_distillers())


def test_each_method_row_shows_its_own_published_figure_and_reference():
    """Issue 26 item 9: not KD's figure on every method's row; the reference code each recipe follows."""
    from intrakd.objectives import reference_of

    rows = {line.split()[0]: line for line in presets_table().splitlines()[1:]}
    pair = "cifar100/resnet56-resnet20"
    assert "70.66" in rows[f"{pair}/kd-vanilla"] and "70.66" not in rows[f"{pair}/dkd-vanilla"]
    assert "71.97" in rows[f"{pair}/dkd-vanilla"]  # DKD's own figure for the pair
    assert "70.66" not in rows[f"{pair}/crd-vanilla"]
    assert "72.32" in rows[f"{pair}/dkd-ls-vanilla"]  # the LS paper's DKD+LS figure
    assert rows[f"{pair}/dkd-vanilla"].endswith(reference_of("dkd").reference)
    assert rows[f"{pair}/mlkd-ls-enriched"].endswith(reference_of("mlkd").reference)
    preset = get_preset(f"{pair}/dkd-vanilla")
    assert (preset.method_published, preset.reference) == (71.97, reference_of("dkd").reference)


def test_feature_methods_show_repdistillers_published_figures():
    # RepDistiller README, Tables 1 and 2 (the CRD paper); n/a where the table has N/A or no row
    presets = all_presets()
    expected = {"resnet32x4-resnet8x4/crd": 75.51, "wrn_40_2-wrn_16_2/fitnet": 73.58, "vgg13-MobileNetV2/at": 59.40,
                "resnet56-resnet20/fsp": 69.95, "wrn_40_2-ShuffleV1/nst": 74.89, "resnet110-resnet32/vid": 72.61,
                "wrn_40_2-wrn_40_1/fsp": None, "resnet32x4-ShuffleV2/fsp": None,
                "resnet32x4-resnet8x4/ofd": None, "resnet32x4-resnet8x4/kdsvd": None}
    for name, figure in expected.items():
        for variant in ("vanilla", "enriched"):
            preset = presets.get(f"cifar100/{name}-{variant}")
            assert preset is not None or figure is None, name
            if preset is not None:
                assert preset.method_published == figure, name
    for method in ("fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft", "fsp", "nst", "crd"):
        assert any(p.method_published is not None for n, p in presets.items() if f"/{method}-" in n), method
