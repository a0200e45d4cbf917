"""GLUE metrics stay defined when a student predicts one constant value (a collapsed regression
head, common under bf16): a sweep must never be handed NaN."""

import logging

import numpy as np
import pytest

from kdsuite.metrics import glue_metrics
from kdsuite.tracks import get_task


def test_constant_regression_predictions_score_zero_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="kdsuite.metrics"):
        scores = glue_metrics(get_task("stsb"), np.full((6, 1), 2.5), np.array([0.0, 1, 2, 3, 4, 5]))
    assert scores == {"pearson": 0.0, "spearman": 0.0}
    assert "undefined for constant predictions" in caplog.text


def test_correlations_of_varying_predictions_are_unchanged():
    labels = np.array([0.0, 1, 2, 3, 4, 5])
    predictions = np.array([[0.1], [0.9], [2.5], [2.4], [4.0], [6.0]])
    scores = glue_metrics(get_task("stsb"), predictions, labels)
    assert scores["spearman"] == pytest.approx(0.9428571, abs=1e-6)
    assert scores["pearson"] == pytest.approx(np.corrcoef(predictions[:, 0], labels)[0, 1])
