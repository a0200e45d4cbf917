"""Layer mappings: which student block is aligned with (and initialised from) which teacher block.

A mapping is a function `(student_layers, teacher_layers) -> [(s, t), ...]` of 1-based block
indices (`hidden_states[l]` is the output of block `l`; 0 is the embeddings). The Hydra group
`mapping` selects one with `_target_` and `_partial_: true`; `validate_pairs` checks the result
against both models before any training. Worked examples are in shared/docs/methods.md.
"""

from __future__ import annotations

LayerPairs = list[tuple[int, int]]


def uniform(student_layers: int, teacher_layers: int) -> LayerPairs:
    """Every student block s = 1..L_S with teacher block round(s * L_T / L_S).

    12 -> 4 gives 3, 6, 9, 12. Python's round() rounds halves to even; the ratio only produces
    halves for odd depths, where either neighbour is an equally good choice.
    """
    _check_depths(student_layers, teacher_layers)
    return [(s, round(s * teacher_layers / student_layers)) for s in range(1, student_layers + 1)]


def skip(student_layers: int, teacher_layers: int) -> LayerPairs:
    """PKD-Skip: `uniform` without the last student block, whose output the logit term covers.

    12 -> 6 gives t = 2, 4, 6, 8, 10.
    """
    return uniform(student_layers, teacher_layers)[:-1]


def last(student_layers: int, teacher_layers: int) -> LayerPairs:
    """PKD-Last: student blocks 1..L_S-1 with the last L_S-1 teacher blocks below the top.

    12 -> 6 gives t = 7, 8, 9, 10, 11.
    """
    _check_depths(student_layers, teacher_layers)
    first = teacher_layers - student_layers + 1
    return [(s, first + s - 1) for s in range(1, student_layers)]


def fdd_uniform(student_layers: int, teacher_layers: int, num_layers: int = 4) -> LayerPairs:
    """The FDD paper's schedule: L_D layers per model at Q, 2Q, ..., L_D*Q, paired in order.

    Q = floor(L / (L_D + 1)) for each model separately. 12 -> 6 with L_D = 4: teacher Q = 2
    (2, 4, 6, 8), student Q = 1 (1, 2, 3, 4).
    """
    _check_depths(student_layers, teacher_layers)
    if num_layers < 1:
        raise ValueError(f"mapping.num_layers (L_D) must be >= 1, got {num_layers}")
    pairs_per_model = []
    for role, depth in (("student", student_layers), ("teacher", teacher_layers)):
        step = depth // (num_layers + 1)
        if step == 0:
            largest = min(student_layers, teacher_layers) - 1
            fits = f"the largest L_D that fits is {largest}" if largest else "no L_D fits"
            raise ValueError(
                f"mapping fdd_uniform: L_D={num_layers} does not fit the {depth}-layer {role} "
                f"(Q = floor({depth} / {num_layers + 1}) = 0); {fits} "
                f"(set mapping.num_layers)"
            )
        pairs_per_model.append([step * j for j in range(1, num_layers + 1)])
    return list(zip(*pairs_per_model))


def custom(student_layers: int, teacher_layers: int, pairs: list) -> LayerPairs:
    """An explicit list of pairs, e.g. `mapping=custom 'mapping.pairs=[[1,3],[2,6]]'`."""
    _check_depths(student_layers, teacher_layers)
    if pairs is None:
        raise ValueError("mapping custom needs mapping.pairs, e.g. 'mapping.pairs=[[1,3],[2,6]]'")
    result = []
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError(f"mapping.pairs entry {list(pair)} is not a [student, teacher] pair")
        result.append((int(pair[0]), int(pair[1])))
    return result


def _check_depths(student_layers: int, teacher_layers: int) -> None:
    if student_layers > teacher_layers:
        raise ValueError(
            f"student has {student_layers} layers but the teacher only {teacher_layers}: "
            f"a student deeper than its teacher is not supported; choose a student with at "
            f"most {teacher_layers} layers"
        )
    if student_layers < 1:
        raise ValueError(f"student must have at least 1 layer, got {student_layers}")


def validate_pairs(
    pairs: LayerPairs, student_layers: int, teacher_layers: int, strictly_increasing: bool = False
) -> LayerPairs:
    """Check `pairs` against both depths; `strictly_increasing` is what FDD's deltas need."""
    if not pairs:
        raise ValueError(
            f"the layer mapping is empty for a {student_layers}-layer student and a "
            f"{teacher_layers}-layer teacher: it must pair at least one layer"
        )
    for s, t in pairs:
        if not 1 <= s <= student_layers:
            raise ValueError(
                f"mapping pair ({s}, {t}): student layer {s} is out of range 1..{student_layers}"
            )
        if not 1 <= t <= teacher_layers:
            raise ValueError(
                f"mapping pair ({s}, {t}): teacher layer {t} is out of range 1..{teacher_layers}"
            )
    if strictly_increasing:
        for (s0, t0), (s1, t1) in zip(pairs, pairs[1:]):
            if not (s1 > s0 and t1 > t0):
                raise ValueError(
                    f"mapping pairs must be strictly increasing in both models for this loss: "
                    f"({s0}, {t0}) is followed by ({s1}, {t1})"
                )
    return pairs
