"""Analysis of what a teacher learned, and of many runs: geometry, soft labels, calibration, plots,
sweeps and reports."""

from intrakd.analysis.calibration import expected_calibration_error, reliability_bins
from intrakd.analysis.geometry import (
    embedding_geometry,
    pair_distances,
    per_class_geometry,
)
from intrakd.analysis.softlabels import soft_label_samples, soft_label_stats

__all__ = [
    "embedding_geometry", "expected_calibration_error", "pair_distances", "per_class_geometry",
    "reliability_bins", "soft_label_samples", "soft_label_stats",
]
