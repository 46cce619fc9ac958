"""Evaluation figures for binary heads (ranking, CTR-style models): reliability curve and ROC, as PNG files.

An AUC says how well a head orders items, a log-loss mixes order and calibration; neither shows *where* a
model is over- or under-confident, which is what decides whether its probabilities can be used as such
(ads pricing, multi-task score blending). These two pictures answer that at a glance in the MLflow run page.
Framework-neutral (numpy + matplotlib on the Agg backend): a project passes labels and probabilities.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = ["expected_calibration_error", "reliability_bins", "roc_points", "save_ranking_figures"]


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct score threshold, from (0, 0) to (1, 1)."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    order = np.argsort(-scores, kind="mergesort")
    labels, scores = labels[order], scores[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), labels.size - 1]
    true_pos = np.cumsum(labels)[last_of_tie]
    false_pos = (last_of_tie + 1) - true_pos
    positives, negatives = max(int(labels.sum()), 1), max(int((~labels).sum()), 1)
    return np.r_[0.0, false_pos / negatives], np.r_[0.0, true_pos / positives]


def reliability_bins(labels: np.ndarray, probs: np.ndarray, bins: int = 15):
    """Per equal-count bin of predicted probability: (mean prediction, observed positive rate, rows)."""
    labels = np.asarray(labels, dtype=np.float64).ravel()
    probs = np.asarray(probs, dtype=np.float64).ravel()
    order = np.argsort(probs, kind="mergesort")
    groups = [g for g in np.array_split(order, min(bins, max(labels.size, 1))) if g.size]
    predicted = np.array([probs[g].mean() for g in groups])
    observed = np.array([labels[g].mean() for g in groups])
    counts = np.array([g.size for g in groups])
    return predicted, observed, counts


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """Row-weighted mean |predicted - observed| over equal-count bins (0 = perfectly calibrated)."""
    predicted, observed, counts = reliability_bins(labels, probs, bins)
    return float(np.sum(np.abs(predicted - observed) * counts) / max(counts.sum(), 1))


def save_ranking_figures(heads: Mapping[str, tuple[np.ndarray, np.ndarray]], folder: Path, *,
                         baselines: Mapping[str, np.ndarray] | None = None, title: str = "") -> list[Path]:
    """Writes `reliability.png` and `roc.png` (one panel per head) into `folder`; returns their paths.

    `heads` maps a head's name to (labels, predicted probabilities); `baselines` optionally maps a head to a
    baseline's probabilities, drawn dashed for comparison.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ml.engine.metrics import roc_auc

    folder.mkdir(parents=True, exist_ok=True)
    baselines = baselines or {}
    names = list(heads)
    paths = []
    for kind in ("reliability", "roc"):
        fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4), dpi=100, squeeze=False)
        for ax, name in zip(axes[0], names, strict=True):
            labels, probs = heads[name]
            curves = [("model", probs, "-")] + ([("baseline", baselines[name], "--")] if name in baselines else [])
            for label, values, style in curves:
                if kind == "reliability":
                    predicted, observed, _ = reliability_bins(labels, values)
                    ece = expected_calibration_error(labels, values)
                    ax.plot(predicted, observed, style, marker="o", ms=3, label=f"{label} (ECE {ece:.3f})")
                else:
                    fpr, tpr = roc_points(labels, values)
                    ax.plot(fpr, tpr, style, label=f"{label} (AUC {roc_auc(labels, values):.3f})")
            ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
            if kind == "reliability":
                top = max(float(np.max(probs)), float(np.mean(labels))) * 1.05
                ax.set_xlim(0, min(1.0, top))
                ax.set_ylim(0, min(1.0, top))
                ax.set_xlabel("mean predicted probability")
                ax.set_ylabel("observed positive rate")
            else:
                ax.set_xlabel("false positive rate")
                ax.set_ylabel("true positive rate")
            ax.set_title(f"{name}: {'reliability' if kind == 'reliability' else 'ROC'}")
            ax.grid(alpha=0.3)
            ax.legend(loc="upper left" if kind == "reliability" else "lower right", fontsize=8)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        path = folder / f"{kind}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths
