"""Power, seeds needed and pooled estimates (comparison.py), checked against hand-computed values."""

import json
import math

import pytest

from intrakd.analysis.comparison import (
    paired_power,
    pool_effects,
    sd_interval,
    se_from_interval,
    seeds_for_halfwidth,
    seeds_for_power,
)
from intrakd.cli import main


def test_pool_two_studies_by_hand():
    # w = 1, 1; fixed 2, se sqrt(1/2); Q = 2 on 1 df; C = 2 - 2/2 = 1; tau2 = 1; random weights 1/2 each.
    p = pool_effects([1.0, 3.0], [1.0, 1.0])
    assert p.fixed == pytest.approx(2.0) and p.fixed_se == pytest.approx(math.sqrt(0.5))
    assert p.q == pytest.approx(2.0) and p.tau2 == pytest.approx(1.0) and p.i2 == pytest.approx(0.5)
    assert p.random == pytest.approx(2.0) and p.random_se == pytest.approx(1.0)


def test_pool_unequal_weights_by_hand():
    # w = 1, 1, 0.25: fixed 3/2.25; Q = 4; C = 2.25 - 2.0625/2.25 = 4/3; tau2 = 2/(4/3) = 1.5;
    # random weights 0.4, 0.4, 1/5.5: random = (0.8 + 4/5.5) / (0.8 + 1/5.5) = 14/9.
    p = pool_effects([0.0, 2.0, 4.0], [1.0, 1.0, 2.0])
    assert p.fixed == pytest.approx(4 / 3)
    assert p.q == pytest.approx(4.0) and p.tau2 == pytest.approx(1.5) and p.i2 == pytest.approx(0.5)
    assert p.random == pytest.approx(14 / 9)
    assert p.random_se == pytest.approx(math.sqrt(1 / (0.8 + 1 / 5.5)))
    low, high = p.interval("fixed")
    assert (low + high) / 2 == pytest.approx(4 / 3) and high - low == pytest.approx(2 * 1.959964 / 1.5, rel=1e-5)


def test_pool_homogeneous_studies_have_no_tau():
    p = pool_effects([1.0, 1.1, 0.9], [0.5, 0.5, 0.5])
    assert p.tau2 == 0.0 and p.i2 == 0.0 and p.random == pytest.approx(p.fixed)


def test_pool_rejects_bad_input():
    with pytest.raises(ValueError, match="at least two"):
        pool_effects([1.0], [1.0])
    with pytest.raises(ValueError, match="positive"):
        pool_effects([1.0, 2.0], [1.0, 0.0])


def test_power_and_seeds_match_textbook_values():
    # One-sample/paired t, d = 0.5, alpha 0.05 two-sided, 80% power: n = 34 (G*Power).
    assert seeds_for_power(0.5, 1.0) == 34
    assert 0.80 < paired_power(0.5, 1.0, 34) < 0.81
    assert paired_power(0.5, 1.0, 33) < 0.8
    # t(0.975, 17) / sqrt(18) = 0.497 <= 0.5 < t(0.975, 16) / sqrt(17) = 0.514.
    assert seeds_for_halfwidth(1.0, 0.5) == 18
    low, high = sd_interval(1.0, 8)  # sqrt(7 / 16.013), sqrt(7 / 1.690)
    assert low == pytest.approx(0.6612, abs=1e-3) and high == pytest.approx(2.0353, abs=1e-3)
    assert se_from_interval(-2.365, 2.365, 8) == pytest.approx(1.0, abs=1e-3)


def test_pool_command(tmp_path, capsys):
    path = tmp_path / "est.json"
    path.write_text(json.dumps([{"name": "a", "mean": 1.0, "ci95": [-1.0, 3.0], "n": 1000},
                                {"name": "b", "mean": 3.0, "ci95": [1.0, 5.0], "n": 1000}]))
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"protocol": "x"}))
    assert main(["pool", str(path), "--into", str(summary), "--key", "pooled"]) == 0
    out = capsys.readouterr().out
    assert "fixed effect" in out and "random effects" in out
    pooled = json.loads(summary.read_text())["pooled"]
    assert pooled["fixed"]["mean"] == pytest.approx(2.0) and pooled["k"] == 2
    assert json.loads(summary.read_text())["protocol"] == "x"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"name": "a", "mean": 1.0}]))
    before = summary.read_text()
    assert main(["pool", str(bad), "--into", str(summary)]) == 2
    assert summary.read_text() == before
