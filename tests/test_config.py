"""Typed configuration: YAML + overrides, unknown keys and wrong types refused with their names."""

import pytest

from intrakd.config import ConfigError, IntraConfig, StudentConfig, TeacherConfig, load_config
from intrakd.train.runfolder import upgrade_stored


def test_defaults_are_the_benchmark_recipe():
    cfg = load_config(TeacherConfig)
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.05, 0.9, 5e-4)
    assert (cfg.optim.epochs, cfg.optim.milestones, cfg.data.batch_size) == (240, [150, 180, 210], 64)
    assert (cfg.intra.weight, cfg.intra.temperature, cfg.intra.delta, cfg.intra.cache_size) == (0.02, 0.1, 0.5, 64)
    student = load_config(StudentConfig)
    assert (student.distill.temperature, student.distill.ce_weight, student.distill.kd_weight) == (4.0, 0.1, 0.9)


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("model: digits_cnn\noptim:\n  lr: 0.1\n  epochs: 5\nintra:\n  weight: 0.03\n")
    cfg = load_config(TeacherConfig, path, ["optim.lr=1e-3", "intra.max_age=10", "data.dataset=digits"])
    assert cfg.model == "digits_cnn" and cfg.optim.epochs == 5 and cfg.optim.lr == 1e-3
    assert cfg.intra.weight == 0.03 and cfg.intra.max_age == 10 and cfg.data.dataset == "digits"


@pytest.mark.parametrize("override, message", [
    (["optim.lrr=0.1"], r"unknown config key optim.lrr; valid keys here: optim.epochs"),
    (["nope=1"], r"unknown config key nope"),
    (["optim.epochs=ten"], r"optim.epochs: expected a whole number, got 'ten'"),
    (["intra.margin=ratio"], r"intra.margin: 'ratio' is not one of 'probability', 'logit'"),
    (["intra.weight=-0.1"], r"intra.weight must be >= 0"),
    (["intra.delta=1.5"], r"intra.delta must lie in \[-1, 1\) for the probability margin"),
    (["intra.delta=1"], r"the gate would pass nothing"),
    (["intra.temperature=0"], r"intra.temperature must be > 0"),
    (["intra.cache_size=0"], r"intra.cache_size must be >= 1"),
    (["views=1"], r"the intra-class loss needs two views"),
    (["optim.milestones=5"], r"optim.milestones: expected a list"),
    (["optim.epochs=2", "optim.milestones=[1,50]"], r"optim.milestones must be <= optim.epochs \(2\), got \[1, 50\]"),
    (["optim.milestones=[180,150]"], r"optim.milestones must be epochs > 0 in ascending order, got \[180, 150\]"),
    (["optim"], r"not of the form key=value"),
    (["optim.milestones=[60, 75"], (r"override 'optim.milestones=\[60, 75': '\[60, 75' is not a valid YAML value: "
                                   r"expected ',' or '\]', but got '<stream end>' \(line 1, column 8\)")),
])
def test_bad_settings_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TeacherConfig, None, override)


def test_default_milestones_scale_with_the_epochs():
    """Only the epochs set: the 150/180/210 of 240 steps at the same fractions (a 30-epoch run decays)."""
    assert load_config(TeacherConfig, None, ["optim.epochs=30"]).optim.milestones == [19, 22, 26]
    assert load_config(TeacherConfig, None, ["optim.epochs=480"]).optim.milestones == [300, 360, 420]
    explicit = load_config(TeacherConfig, None, ["optim.epochs=30", "optim.milestones=[20,25]"])
    assert explicit.optim.milestones == [20, 25]
    assert load_config(TeacherConfig, None, ["optim.epochs=3", "optim.milestones=[]"]).optim.milestones == []
    assert load_config(TeacherConfig, None, ["optim.epochs=2"]).optim.milestones == [1, 2, 2]


def test_stored_milestones_past_the_end_are_dropped():
    """A run recorded before milestones were checked resumes: its steps past the end never happened."""
    stored = upgrade_stored({"optim": {"epochs": 2, "milestones": [1, 150, 180]}})
    assert stored["optim"]["milestones"] == [1]


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(TeacherConfig, tmp_path / "missing.yaml")


def test_config_file_that_is_not_yaml_is_named_with_the_place(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("optim:\n  lr: 0.1\n  milestones: [60, 75\n")
    with pytest.raises(ConfigError, match=r"t.yaml is not valid YAML: expected ',' or '\]', but got '<stream end>' "
                                          r"\(line 4, column 1\)"):
        load_config(TeacherConfig, path)


def test_gate_settings_mean_what_they_say():
    assert load_config(TeacherConfig, overrides=["intra.delta=null"]).intra.delta is None
    assert load_config(TeacherConfig, overrides=["intra.margin=logit", "intra.delta=7.5"]).intra.delta == 7.5
    assert load_config(TeacherConfig, overrides=["intra.margin=logit", "intra.delta=-3"]).intra.delta == -3
    with pytest.raises(ConfigError, match="finite"):
        load_config(TeacherConfig, overrides=["intra.margin=logit", "intra.delta=.inf"])


def test_runs_stored_before_self_exclusion_are_read_as_they_were_made():
    old = {"model": "resnet20", "intra": {"weight": 0.02, "delta": -1.0, "margin": "logit"}}
    upgraded = upgrade_stored(old)
    assert upgraded["intra"]["exclude_self"] is False and upgraded["intra"]["delta"] is None
    assert upgraded["intra"]["auto_ratio"] == IntraConfig.auto_ratio  # no effect on a fixed lambda
    assert old["intra"]["delta"] == -1.0  # the input is not changed
    assert upgrade_stored({"intra": {"delta": 0.5}})["intra"] == {"delta": 0.5, "exclude_self": False,
                                                                  "auto_ratio": IntraConfig.auto_ratio}
    new = {"intra": {"delta": -1.0, "exclude_self": True, "auto_ratio": 0.2}}
    assert upgrade_stored(new) == new  # a run of this version: -1 is a threshold
    assert upgrade_stored({"model": "resnet8", "distill": {}}) == {"model": "resnet8", "distill": {}}


def test_runs_stored_before_bad_image_handling_are_read_as_stopping_at_one():
    old = {"data": {"dataset": "cifar100"}, "intra": {"weight": 0.02, "exclude_self": True, "auto_ratio": 0.05}}
    assert upgrade_stored(old)["data"] == {"dataset": "cifar100", "bad_images": "error"}
    assert old["data"] == {"dataset": "cifar100"}
    new = {"data": {"dataset": "cifar100", "bad_images": "skip"}}
    assert upgrade_stored(new) == new


def test_a_student_configuration_loads_in_a_fresh_interpreter_that_imports_only_the_config():
    """The built-in methods are registered whatever a user's script imports first."""
    import subprocess
    import sys

    code = "from intrakd.config import StudentConfig, load_config; print(load_config(StudentConfig).distill.method)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "kd"
