"""The evaluation figures' numbers: ROC points agree with the rank AUC, calibration error finds miscalibration."""

import numpy as np

from ml.engine.figures import expected_calibration_error, reliability_bins, roc_points, save_ranking_figures
from ml.engine.metrics import roc_auc


def sample(n=20_000, seed=0):
    rng = np.random.default_rng(seed)
    probs = rng.beta(2, 8, n)
    labels = (rng.random(n) < probs).astype(np.int64)  # calibrated by construction
    return labels, probs


def test_roc_points_integrate_to_the_rank_auc_ties_included():
    labels, probs = sample()
    probs = np.round(probs, 2)  # many ties
    fpr, tpr = roc_points(labels, probs)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert abs(np.trapezoid(tpr, fpr) - roc_auc(labels, probs)) < 1e-9


def test_calibration_error_is_small_for_calibrated_and_large_for_overconfident_scores():
    labels, probs = sample()
    assert expected_calibration_error(labels, probs) < 0.01
    assert expected_calibration_error(labels, np.clip(probs * 2, 0, 1)) > 0.1
    predicted, observed, counts = reliability_bins(labels, probs, bins=10)
    assert counts.sum() == labels.size and np.all(np.diff(predicted) > 0)
    assert np.max(np.abs(predicted - observed)) < 0.03


def test_figures_are_png_files_one_panel_per_head(tmp_path):
    labels, probs = sample(2000)
    paths = save_ranking_figures({"click": (labels, probs), "save": (labels, probs ** 2)}, tmp_path / "f",
                                 baselines={"click": np.full(labels.size, labels.mean())})
    assert [p.name for p in paths] == ["reliability.png", "roc.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
