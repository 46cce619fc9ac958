import numpy as np
import pytest

from ml.engine.metrics import log_loss, roc_auc


def brute_force_auc(labels, scores):
    pos = scores[labels == 1]
    neg = scores[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_pairwise_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(size=300) + labels * 0.5, 1)  # rounding creates ties
    assert roc_auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores), abs=1e-12)


def test_auc_edges():
    assert roc_auc(np.array([0, 1]), np.array([0.1, 0.9])) == 1.0
    assert roc_auc(np.array([1, 0]), np.array([0.1, 0.9])) == 0.0
    assert np.isnan(roc_auc(np.array([1, 1]), np.array([0.1, 0.9])))
    with pytest.raises(ValueError, match="differ in shape"):
        roc_auc(np.array([1, 0, 1]), np.array([0.1, 0.9]))


def test_log_loss():
    assert log_loss(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(np.log(2))
    assert log_loss(np.array([1]), np.array([0.0])) == pytest.approx(-np.log(1e-7))
