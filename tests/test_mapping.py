"""Layer mappings: the worked examples of shared/docs/methods.md and every error case."""

import pytest

from kdsuite.mapping import custom, fdd_uniform, last, skip, uniform, validate_pairs


def teacher_side(pairs):
    return [t for _, t in pairs]


def test_uniform_worked_examples():
    assert uniform(4, 12) == [(1, 3), (2, 6), (3, 9), (4, 12)]
    assert teacher_side(uniform(6, 12)) == [2, 4, 6, 8, 10, 12]
    assert uniform(2, 6) == [(1, 3), (2, 6)]


def test_skip_drops_the_last_student_layer():
    assert skip(6, 12) == [(1, 2), (2, 4), (3, 6), (4, 8), (5, 10)]


def test_last_takes_the_top_blocks_below_the_top():
    assert last(6, 12) == [(1, 7), (2, 8), (3, 9), (4, 10), (5, 11)]


def test_fdd_uniform_paper_schedule():
    assert fdd_uniform(6, 12, num_layers=4) == [(1, 2), (2, 4), (3, 6), (4, 8)]
    assert fdd_uniform(12, 24, num_layers=4) == [(2, 4), (4, 8), (6, 12), (8, 16)]


def test_fdd_uniform_names_the_largest_l_d_that_fits():
    with pytest.raises(ValueError, match="L_D=4 does not fit the 2-layer student.*largest L_D that fits is 1"):
        fdd_uniform(2, 6, num_layers=4)
    assert fdd_uniform(2, 6, num_layers=1) == [(1, 3)]


def test_custom_pairs():
    assert custom(2, 6, [[1, 3], [2, 6]]) == [(1, 3), (2, 6)]
    with pytest.raises(ValueError, match="mapping.pairs"):
        custom(2, 6, None)
    with pytest.raises(ValueError, match=r"\[1, 2, 3\] is not a \[student, teacher\] pair"):
        custom(2, 6, [[1, 2, 3]])


def test_student_deeper_than_teacher_is_refused():
    with pytest.raises(ValueError, match="student has 8 layers but the teacher only 6"):
        uniform(8, 6)


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ([], "mapping is empty"),
        ([(0, 3)], "student layer 0 is out of range 1..2"),
        ([(3, 3)], "student layer 3 is out of range 1..2"),
        ([(1, 7)], "teacher layer 7 is out of range 1..6"),
    ],
)
def test_validate_pairs_errors(pairs, message):
    with pytest.raises(ValueError, match=message):
        validate_pairs(pairs, student_layers=2, teacher_layers=6)


def test_strictly_increasing_is_enforced_only_when_asked():
    pairs = [(1, 4), (2, 4)]
    assert validate_pairs(pairs, 2, 6) == pairs
    with pytest.raises(ValueError, match=r"strictly increasing.*\(1, 4\) is followed by \(2, 4\)"):
        validate_pairs(pairs, 2, 6, strictly_increasing=True)
    with pytest.raises(ValueError, match="strictly increasing"):
        validate_pairs([(2, 3), (1, 6)], 2, 6, strictly_increasing=True)
