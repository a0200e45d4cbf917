"""Alignment of two tokenizations of one text by the character spans of their tokens.

Two tokenizers cut a response into different tokens, so position i of the student and position i
of the teacher predict different pieces of text. Grouping by text instead: walk both token lists
and close a group wherever both sides have a token ending at the same character. Each group is a
run of consecutive tokens on each side covering the same stretch of text (one-to-one, one-to-many,
many-to-one or many-to-many), and groups follow each other in text order. This is the walk of
TRL's GOLD trainer (`_align_by_byte_offsets`), written here on character offsets, the unit both
tokenizers' offset mappings share for the same Python string.

Choices where GOLD is silent or differs:
- Offsets are in one coordinate system (characters of the response text). A token that starts
  before the response (a joint tokenisation of prompt and response that cuts mid-word) counts from
  the response's first character: only where a token ends matters to the walk.
- A remainder after the last common boundary (one side truncated by `max_seq_length`, or ends
  that never meet) is left out: it is not text both sides cover. GOLD appends it as a last group.
- Zero-width tokens (an end-of-sequence token placed at the end of the text) close a group with a
  zero-width token of the other side at the same place, so eos aligns with eos.
- Byte-level BPE tokenizers give every byte token of a multi-byte character (日, an emoji) that
  character's whole span, so several consecutive tokens end at the same character. A group that
  closes there takes all of them on both sides; GOLD gets the same grouping by working in bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Span = tuple[int, int]  # [start, end) in characters of the shared text


@dataclass(frozen=True)
class Alignment:
    """Groups of token indices (into each side's list of spans), pairwise covering the same text.

    `student_groups[k]` and `teacher_groups[k]` are the consecutive token indices of group k on
    each side; `covered_chars` is the number of text characters inside groups, `total_chars` the
    characters either side's tokens reach (the coverage is their ratio).
    """

    student_groups: tuple[tuple[int, ...], ...]
    teacher_groups: tuple[tuple[int, ...], ...]
    covered_chars: int
    total_chars: int

    @property
    def coverage(self) -> float:
        """Fraction of the text's characters that lie inside aligned groups (1 when there is no text)."""
        return self.covered_chars / self.total_chars if self.total_chars else 1.0

    def group_ids(self, side: str, length: int) -> list[int]:
        """Per token of one side (`length` tokens): its group's index, or -1 outside every group."""
        ids = [-1] * length
        for number, group in enumerate(self.student_groups if side == "student" else self.teacher_groups):
            for index in group:
                ids[index] = number
        return ids


def align_spans(student_spans: Sequence[Span], teacher_spans: Sequence[Span], text_start: int = 0) -> Alignment:
    """Group two tokenizations of one text where their token boundaries coincide.

    Walk both lists, advancing the side whose current token ends first; when both current tokens
    end at the same character, each side also takes the tokens right after it that end there too
    (the other bytes of one character under a byte-level BPE), and the tokens walked since the last
    such point form one group on each side. Spans are [start, end) character offsets; `text_start`
    is where the shared text begins (tokens ending at or before it are outside the text and skipped
    on their side).
    """
    s = _first_inside(student_spans, text_start)
    t = _first_inside(teacher_spans, text_start)
    student_groups, teacher_groups = [], []
    s_first, t_first, boundary = s, t, text_start
    covered = 0
    while s < len(student_spans) and t < len(teacher_spans):
        s_end, t_end = student_spans[s][1], teacher_spans[t][1]
        if s_end < t_end:
            s += 1
        elif t_end < s_end:
            t += 1
        else:
            s = _past_same_end(student_spans, s, s_end)
            t = _past_same_end(teacher_spans, t, t_end)
            student_groups.append(tuple(range(s_first, s)))
            teacher_groups.append(tuple(range(t_first, t)))
            covered += s_end - boundary
            s_first, t_first, boundary = s, t, s_end
    reach = max([end for _, end in list(student_spans) + list(teacher_spans)], default=text_start)
    return Alignment(tuple(student_groups), tuple(teacher_groups), covered, max(reach - text_start, 0))


def _past_same_end(spans: Sequence[Span], index: int, end: int) -> int:
    """Index after token `index` and every following token of width > 0 that also ends at `end`.

    A byte-level BPE (GPT-2, Llama 3, Qwen) cuts a multi-byte character into byte tokens that all
    carry that character's span: "日" is three tokens spanning (2, 3). All of them belong to the
    group the character closes; left behind, they would open the next group and pair the next
    character with bytes of this one. Zero-width tokens (an eos at the end) stay for the next group.
    """
    index += 1
    while index < len(spans) and spans[index][1] == end and spans[index][0] < end:
        index += 1
    return index


def _first_inside(spans: Sequence[Span], text_start: int) -> int:
    """Index of the first token that ends after `text_start`, or that is a zero-width token at it
    or later (tokens wholly before the text do not take part)."""
    for index, (start, end) in enumerate(spans):
        if end > text_start or (start == end and start >= text_start):
            return index
    return len(spans)
