"""GLUE metrics computed with scikit-learn and scipy (never the `evaluate` package, which fetches
metric code from the hub)."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from kdsuite.tasks import TaskSpec


def glue_metrics(task: TaskSpec, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's GLUE metrics from raw model outputs.

    Classification: arg-max of the logits against integer labels (accuracy, binary F1 of the
    positive class for MRPC, Matthews correlation for CoLA). Regression (STS-B): the single
    output column against the gold scores (Pearson and Spearman correlation).
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
        "pearson": lambda: pearsonr(predictions, labels)[0],
        "spearman": lambda: spearmanr(predictions, labels)[0],
    }
    return {name: float(scorers[name]()) for name in task.metrics}
