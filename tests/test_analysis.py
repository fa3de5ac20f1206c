"""Geometry, soft-label and calibration statistics on constructed inputs with known answers."""

import itertools
import math

import pytest
import torch

from intrakd.analysis import (
    embedding_geometry,
    expected_calibration_error,
    pair_distances,
    per_class_geometry,
    reliability_bins,
    soft_label_samples,
    soft_label_stats,
)
from intrakd.analysis.analyze import Predictions, analyze_predictions, compare_summaries, subsample


def _three_classes():
    # class 0: (0,0), (6,0) -> spread 6, centre (3,0); class 1: (0,8), (6,8) -> spread 6, centre (3,8);
    # class 2: the single point (3,-4). Centre distances: 0-1 8, 0-2 4, 1-2 12 (mean 8).
    z = torch.tensor([[0.0, 0.0], [6.0, 0.0], [0.0, 8.0], [6.0, 8.0], [3.0, -4.0]])
    labels = torch.tensor([0, 0, 1, 1, 2])
    return z, labels


def test_geometry_known_answer():
    z, labels = _three_classes()
    overall = embedding_geometry(z, labels, normalize=False)
    assert overall == pytest.approx({"intra_class_distance": 6.0, "inter_class_distance": 8.0,
                                     "intra_inter_ratio": 0.75})
    per_class = per_class_geometry(z, labels, normalize=False)
    assert per_class["classes"] == [0, 1, 2]
    assert per_class["intra_class_distance"][:2] == pytest.approx([6.0, 6.0])
    assert math.isnan(per_class["intra_class_distance"][2])  # a class of one image has no spread
    assert per_class["inter_class_distance"] == pytest.approx([6.0, 10.0, 8.0])
    assert per_class["intra_inter_ratio"][:2] == pytest.approx([1.0, 0.6])
    assert per_class["mean_centre_distance"] == pytest.approx(8.0)


def test_geometry_normalises_by_default():
    z, labels = _three_classes()
    assert embedding_geometry(z * 7.5 + 0.0, labels) != embedding_geometry(z, labels, normalize=False)
    # scaling does not change the normalised geometry
    assert embedding_geometry(z[1:] * 3.0, labels[1:]) == pytest.approx(embedding_geometry(z[1:], labels[1:]))


def test_per_class_geometry_matches_slow_loops():
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(60, 5, generator=generator)
    labels = torch.randint(0, 4, (60,), generator=generator)
    zn = z / z.norm(dim=1, keepdim=True)
    result = per_class_geometry(z, labels)
    centres = {}
    for c in range(4):
        members = [zn[i] for i in range(60) if labels[i] == c]
        pairs = [(a - b).norm().item() for a, b in itertools.combinations(members, 2)]
        assert result["intra_class_distance"][c] == pytest.approx(sum(pairs) / len(pairs))
        centres[c] = sum(members) / len(members)
    for c in range(4):
        others = [(centres[c] - centres[o]).norm().item() for o in range(4) if o != c]
        assert result["inter_class_distance"][c] == pytest.approx(sum(others) / 3)
    all_pairs = [(centres[a] - centres[b]).norm().item() for a, b in itertools.combinations(range(4), 2)]
    assert result["mean_centre_distance"] == pytest.approx(sum(all_pairs) / len(all_pairs))


def test_pair_distances_draws_the_right_pairs():
    # same-class pairs are exactly 1 apart, different-class pairs at least 10; class 2 has one image
    z = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 10.0], [1.0, 10.0], [0.0, 30.0]])
    labels = torch.tensor([0, 0, 1, 1, 2])
    intra, inter = pair_distances(z, labels, max_pairs=500, normalize=False, seed=3)
    assert intra.shape == (500,)
    assert torch.allclose(intra, torch.ones_like(intra))
    assert len(inter) > 300 and bool((inter >= 10).all())
    again = pair_distances(z, labels, max_pairs=500, normalize=False, seed=3)
    assert torch.equal(again[0], intra) and torch.equal(again[1], inter)
    no_pairs, _ = pair_distances(z[[0, 2, 4]], labels[[0, 2, 4]], max_pairs=10, normalize=False)
    assert no_pairs.numel() == 0


def test_soft_label_statistics_known_answers():
    c = 10
    uniform = soft_label_stats(torch.zeros(4, c), torch.tensor([0, 1, 2, 3]), temperature=4.0)
    assert uniform["soft_entropy"] == pytest.approx(math.log(c))
    assert uniform["soft_effective_classes"] == pytest.approx(c)
    assert uniform["soft_off_target_mass"] == pytest.approx((c - 1) / c)
    # p = (3/4, 1/4) at T = 1; at T = 2 the logits are halved: p = (sqrt3, 1) / (1 + sqrt3)
    logits = torch.tensor([[math.log(3.0), 0.0]])
    s1 = soft_label_samples(logits, torch.tensor([0]), 1.0)
    assert s1["entropy"].item() == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert s1["off_target_mass"].item() == pytest.approx(0.25)
    assert s1["effective_classes"].item() == pytest.approx(math.exp(s1["entropy"].item()))
    s2 = soft_label_samples(logits, torch.tensor([1]), 2.0)
    assert s2["off_target_mass"].item() == pytest.approx(math.sqrt(3) / (1 + math.sqrt(3)))
    confident = soft_label_stats(torch.tensor([[100.0, 0.0, 0.0]]), torch.tensor([0]), 1.0)
    assert confident["soft_entropy"] == pytest.approx(0.0, abs=1e-12)
    assert confident["soft_effective_classes"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        soft_label_stats(logits, torch.tensor([0]), 0.0)


def test_ece_known_answer():
    # two samples at confidence 0.85 (one right) and two at 0.65 (both right):
    # ECE = 0.5 * |0.5 - 0.85| + 0.5 * |1.0 - 0.65| = 0.35
    hi, lo = math.log(0.85 / 0.15), math.log(0.65 / 0.35)
    logits = torch.tensor([[hi, 0.0], [hi, 0.0], [lo, 0.0], [0.0, lo]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 1])
    assert expected_calibration_error(logits, labels) == pytest.approx(0.35)
    table = reliability_bins(logits, labels, bins=10)
    assert table["count"][8] == 2 and table["accuracy"][8] == pytest.approx(0.5)
    assert table["confidence"][8] == pytest.approx(0.85)
    assert table["count"][6] == 2 and table["accuracy"][6] == pytest.approx(1.0)
    assert sum(table["count"]) == 4 and math.isnan(table["accuracy"][0])
    perfect = torch.tensor([[50.0, 0.0], [0.0, 50.0]])
    assert expected_calibration_error(perfect, torch.tensor([0, 1])) == pytest.approx(0.0, abs=1e-12)


def test_ece_matches_slow_loop():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(300, 7, generator=generator) * 3
    labels = torch.randint(0, 7, (300,), generator=generator)
    probs = torch.softmax(logits.double(), 1)
    slow = 0.0
    for b in range(15):
        lo, hi = b / 15, (b + 1) / 15
        members = [i for i in range(300) if lo < probs[i].max().item() <= hi]
        if members:
            acc = sum(int(probs[i].argmax().item() == labels[i].item()) for i in members) / len(members)
            conf = sum(probs[i].max().item() for i in members) / len(members)
            slow += len(members) / 300 * abs(acc - conf)
    assert expected_calibration_error(logits, labels, 15) == pytest.approx(slow)


def test_analyze_predictions_and_compare():
    z, labels = _three_classes()
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 5.0, 0], [0, 5.0, 0], [0, 0, 5.0]])
    result = analyze_predictions(Predictions(logits, z, labels), temperature=1.0)
    assert result["images"] == 5 and result["acc"] == pytest.approx(80.0)
    assert result["per_class"]["acc"] == pytest.approx([50.0, 100.0, 100.0])
    assert result["per_class"]["intra_class_distance"][2] is None  # NaN -> JSON null
    assert result["temperature"] == 1.0 and len(result["reliability"]["count"]) == 15
    other = {**result, "acc": 90.0, "ece": result["ece"] + 0.1}
    diff = compare_summaries(result, other)
    assert diff["acc"] == pytest.approx(10.0) and diff["ece"] == pytest.approx(0.1)
    assert "images" not in diff and "per_class" not in diff


def test_subsample_keeps_classes_and_is_deterministic():
    labels = torch.arange(100).repeat_interleave(10)
    index = subsample(labels, max_classes=20, max_points=150, seed=0)
    assert len(index) == 150 and len(labels[index].unique()) <= 20
    assert torch.equal(index, subsample(labels, 20, 150, seed=0))
    assert torch.equal(index, index.sort().values)
    assert len(subsample(labels, 5, 1000)) == 50


def test_plots_are_written_and_non_empty(tmp_path):
    pytest.importorskip("matplotlib")
    from intrakd.analysis import plots

    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(6).repeat_interleave(15)
    models = []
    for name, spread in (("a", 0.5), ("b", 1.5)):
        centres = torch.randn(6, 8, generator=generator) * 3
        z = centres[labels] + spread * torch.randn(90, 8, generator=generator)
        logits = 4 * torch.nn.functional.one_hot(labels, 6).float() + torch.randn(90, 6, generator=generator)
        models.append((name, Predictions(logits, z, labels)))
    results = [analyze_predictions(p) for _, p in models]
    written = [
        plots.plot_embedding_map(models, tmp_path / "map.png", max_classes=4, max_points=50),
        plots.plot_distance_histograms(models, tmp_path / "dist.png", max_pairs=500),
        plots.plot_soft_labels(models, tmp_path / "soft.png", 4.0),
        plots.plot_reliability([(n, r["reliability"], r["ece"]) for (n, _), r in zip(models, results)],
                               tmp_path / "rel.png"),
        plots.plot_per_class([(n, r["per_class"]) for (n, _), r in zip(models, results)], tmp_path / "pc.png"),
        plots.plot_training_curves([("run", [{"epoch": 1, "ce": 2.0, "val_acc": 10.0, "pass_rate": 0.1},
                                             {"epoch": 2, "ce": 1.5, "val_acc": 20.0, "pass_rate": 0.3}])],
                                   tmp_path / "curves.png"),
    ]
    for path in written:
        assert path.is_file() and path.stat().st_size > 5_000, path
    with pytest.raises(ValueError, match="no numeric metrics"):
        plots.plot_training_curves([("run", [{"epoch": 1}])], tmp_path / "none.png")
