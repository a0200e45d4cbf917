"""GLUE metrics computed with scikit-learn and scipy (never the `evaluate` package, which fetches
metric code from the hub)."""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from kdsuite.tracks.specs import ClassificationTask

log = logging.getLogger(__name__)


def correlation(statistic, predictions: np.ndarray, labels: np.ndarray, name: str) -> float:
    """Pearson/Spearman, defined as 0.0 (with a warning) where it is undefined: constant
    predictions, as an untrained or collapsed regression head gives. A sweep must never be handed
    NaN as an objective."""
    if np.ptp(predictions) == 0 or np.ptp(labels) == 0:
        log.warning("%s is undefined for constant predictions (all %.4g): reported as 0.0", name, predictions[0])
        return 0.0
    value = float(statistic(predictions, labels)[0])
    return 0.0 if math.isnan(value) else value


def glue_metrics(task: ClassificationTask, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's GLUE metrics from raw model outputs.

    Classification: arg-max of the logits against integer labels (accuracy, binary F1 of the
    positive class for MRPC, Matthews correlation for CoLA). Regression (STS-B): the single
    output column against the gold scores (Pearson and Spearman correlation; 0.0 for constant
    predictions, see `correlation`).
    """
    if task.is_regression:
        predictions = np.asarray(logits, dtype=np.float64).reshape(-1)
    else:
        predictions = np.asarray(logits).argmax(axis=-1)
    labels = np.asarray(labels).reshape(-1)
    scorers = {
        "accuracy": lambda: accuracy_score(labels, predictions),
        "f1": lambda: f1_score(labels, predictions),
        "mcc": lambda: matthews_corrcoef(labels, predictions),
        "pearson": lambda: correlation(pearsonr, predictions, labels, "pearson"),
        "spearman": lambda: correlation(spearmanr, predictions, labels, "spearman"),
    }
    return {name: float(scorers[name]()) for name in task.metrics}
