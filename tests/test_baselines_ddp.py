"""pkd, tinybert, minilm (v1 and v2) and distilbert on two gloo processes, in one torchrun launch:
every family trains, both ranks hold the same student (the loss's learned parts included) after
every step, the logged terms are the global means on both ranks, TinyBERT switches stage at the
same step on both, and the attention hooks keep nothing from one step to the next."""

from __future__ import annotations

import json
import math

import pytest
from conftest import REPO, glue_path
from ddp_baselines_worker import FAMILIES
from test_ddp import SMALL_RUN, launch

pytestmark = pytest.mark.e2e  # starts processes and trains

TERMS = {
    "pkd": {"ce", "kd", "pt"},
    "tinybert": {"attn", "hidn", "embd", "pred", "stage"},
    "minilm_v1": {"attn_kl", "vr_kl", "ce"},
    "minilm_v2": {"qq_kl", "kk_kl", "vv_kl", "ce"},
    "distilbert": {"kd", "ce", "cos"},
}


@pytest.mark.slow(seconds=110)
def test_every_baseline_trains_on_two_processes(tmp_path):
    overrides = [*SMALL_RUN, f"dataset.data_dir={glue_path()}", "trainer.max_steps=3", "trainer.logging_steps=1",
                 "trainer.warmup_steps=0", "trainer.learning_rate=1e-2", "trainer.per_device_train_batch_size=4"]
    launch(2, str(REPO / "tests" / "ddp_baselines_worker.py"), str(tmp_path / "ddp"), *overrides, cwd=tmp_path)

    for family in FAMILIES:
        ranks = [json.loads((tmp_path / "ddp" / f"{family}-rank{rank}.json").read_text()) for rank in (0, 1)]
        assert len(ranks[0]["hashes"]) == 3, family
        assert ranks[0]["hashes"] == ranks[1]["hashes"], family  # one student on both ranks
        assert len(set(ranks[0]["hashes"])) == 3, family  # and it moved at every step
        assert ranks[0]["captured"] == ranks[1]["captured"] == [0, 0, 0], family
        step_logs = [[log for log in rank["logs"] if "loss" in log] for rank in ranks]
        assert len(step_logs[0]) == 3, (family, ranks[0]["logs"])
        for log0, log1 in zip(*step_logs):
            assert TERMS[family] <= set(log0), (family, log0)
            for term in TERMS[family]:
                assert math.isfinite(log0[term]) and log0[term] == pytest.approx(log1[term], rel=1e-6), (family, term)
    tinybert = json.loads((tmp_path / "ddp" / "tinybert-rank0.json").read_text())
    assert [log["stage"] for log in tinybert["logs"] if "stage" in log] == [0.0, 0.0, 1.0]
    assert json.loads((tmp_path / "ddp" / "pkd-rank0.json").read_text())["pairs_used"] == [[1, 2]]
