"""An exact-match map between two vocabularies, by the text each token stands for.

Token strings are not comparable across tokenizer families: WordPiece writes a word's continuation
as `##ing` and its start as `the`, byte-level BPE (GPT-2, SmolLM2) writes a leading space as `Ġ`
and every byte as one printable character, SentencePiece writes the space as `▁`, and byte
fallback writes a raw byte as `<0x41>`. Each token is therefore normalised to the bytes of text it
stands for before matching, and two ids match when their normalised texts are equal. The map
serves GOLD's hybrid loss (Patiño et al., 2025; TRL `ULDLoss._initialize_vocabulary_mapping`,
which matches raw strings only).

Normalisation choices (GOLD does none; these are ours):
- WordPiece: `##x` -> `x`; any other token starts a word, which follows a space in running text,
  so `x` -> ` x`, except a single punctuation character, which WordPiece splits off whether or not
  a space precedes it (`x` -> `x`). Uncased WordPiece vocabularies are lower-case, so only
  lower-case pieces can match a cased vocabulary.
- Byte-level BPE: GPT-2's byte-to-unicode table inverted, character by character.
- Metaspace (SentencePiece): `▁` -> space.
- Byte fallback `<0xNN>` -> the byte NN, on any tokenizer.
- Special tokens (`all_special_ids`) take no part: their texts (`[SEP]`, `<|im_end|>`) are markers,
  not text. When two ids of one vocabulary normalise to the same text, the lower id is kept.

Same family: when one vocabulary is the other with tokens added at the end (or the same one, and
only the models' output sizes differ, as Qwen's 151,936 and 152,064), the shared ids mean the same
tokens and `same_family_size` is their number; ULD then distils on those ids with the ordinary
divergence instead.

Maps are built once per pair of vocabularies and kept in memory for the process (`vocab_map`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import string
from dataclasses import dataclass
from functools import lru_cache

import torch

log = logging.getLogger(__name__)

BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
SCHEMES = ("wordpiece", "byte_level", "metaspace", "plain")


@lru_cache(maxsize=1)
def unicode_to_byte() -> dict[str, int]:
    """GPT-2's byte-to-unicode table, inverted: printable bytes map to themselves, the other 68
    to the characters 256, 257, ... in byte order."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[chr(byte)] = byte
        else:
            table[chr(256 + extra)] = byte
            extra += 1
    return table


def _components(node) -> list[dict]:
    """Every normaliser/pre-tokenizer/decoder component in a tokenizer.json subtree."""
    if isinstance(node, dict):
        found = [node] if "type" in node else []
        for value in node.values():
            found += _components(value)
        return found
    if isinstance(node, list):
        return [component for item in node for component in _components(item)]
    return []


def tokenizer_scheme(tokenizer) -> tuple[str, str]:
    """(scheme, WordPiece continuation prefix) of a tokenizer, read from its fast backend's
    description; a slow tokenizer is judged by its vocabulary (`##`, `Ġ`, `▁` pieces)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        description = json.loads(backend.to_str())
        model = description.get("model", {})
        if model.get("type") == "WordPiece":
            return "wordpiece", model.get("continuing_subword_prefix") or "##"
        types = {component["type"] for key in ("pre_tokenizer", "decoder")
                 for component in _components(description.get(key))}
        if "ByteLevel" in types:
            return "byte_level", ""
        if "Metaspace" in types or any(c.get("content") == " " and "▁" in json.dumps(c.get("pattern", ""))
                                       for c in _components(description.get("decoder"))):
            return "metaspace", ""
        return "plain", ""
    pieces = list(tokenizer.get_vocab())

    def share(marker):
        return sum(marker in piece for piece in pieces) / max(len(pieces), 1)

    if share("##") > 0.05:
        return "wordpiece", "##"
    if share("Ġ") > 0.05:
        return "byte_level", ""
    if share("▁") > 0.05:
        return "metaspace", ""
    return "plain", ""


def token_text(piece: str, scheme: str, prefix: str = "##") -> bytes | None:
    """The bytes of text a vocabulary piece stands for under `scheme` (None: not a text piece)."""
    fallback = BYTE_FALLBACK.match(piece)
    if fallback:
        return bytes([int(fallback.group(1), 16)])
    if scheme == "wordpiece":
        if piece.startswith(prefix) and len(piece) > len(prefix):
            return piece[len(prefix):].encode()
        if len(piece) == 1 and piece in string.punctuation:
            return piece.encode()
        return b" " + piece.encode()
    if scheme == "byte_level":
        table = unicode_to_byte()
        if all(char in table for char in piece):
            return bytes(table[char] for char in piece)
        return piece.encode()
    if scheme == "metaspace":
        return piece.replace("▁", " ").encode()
    return piece.encode()


def normalised_vocabulary(tokenizer) -> dict[bytes, int]:
    """Text -> id over the tokenizer's non-special pieces (the lowest id where texts repeat)."""
    scheme, prefix = tokenizer_scheme(tokenizer)
    special = set(tokenizer.all_special_ids)
    texts: dict[bytes, int] = {}
    for piece, index in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]):
        if index in special:
            continue
        text = token_text(piece, scheme, prefix)
        if text and text not in texts:
            texts[text] = index
    return texts


def id_pieces(tokenizer) -> list[str | None]:
    """The vocabulary as a list indexed by id (None for ids no piece has)."""
    vocab = tokenizer.get_vocab()
    pieces: list[str | None] = [None] * (max(vocab.values(), default=-1) + 1)
    for piece, index in vocab.items():
        pieces[index] = piece
    return pieces


def same_family_size(student_tokenizer, teacher_tokenizer) -> int | None:
    """The number of shared ids when one vocabulary is the other plus tokens at the end (or equal);
    None when they differ on some shared id."""
    student, teacher = id_pieces(student_tokenizer), id_pieces(teacher_tokenizer)
    shared = min(len(student), len(teacher))
    return shared if shared and student[:shared] == teacher[:shared] else None


@dataclass(frozen=True)
class VocabMap:
    """Matched (teacher id, student id) pairs, sorted by teacher id, and what they cover.

    `teacher_size`/`student_size` are the tokenizers' vocabulary sizes; `same_family_size` is set
    when the two vocabularies agree on every shared id (see the module docstring).
    """

    teacher_ids: torch.Tensor  # (M,) long
    student_ids: torch.Tensor  # (M,) long
    teacher_size: int
    student_size: int
    teacher_scheme: str
    student_scheme: str
    same_family_size: int | None = None

    @property
    def size(self) -> int:
        return int(self.teacher_ids.numel())

    @property
    def teacher_coverage(self) -> float:
        """Fraction of the teacher's vocabulary with a match in the student's."""
        return self.size / self.teacher_size if self.teacher_size else 0.0

    @property
    def student_coverage(self) -> float:
        return self.size / self.student_size if self.student_size else 0.0

    def summary(self) -> str:
        family = (f"; same family: the first {self.same_family_size} ids are the same tokens"
                  if self.same_family_size else "")
        return (f"vocabulary map {self.teacher_scheme} teacher ({self.teacher_size}) <-> {self.student_scheme} "
                f"student ({self.student_size}): {self.size} exact matches, {self.teacher_coverage:.1%} of the "
                f"teacher's vocabulary, {self.student_coverage:.1%} of the student's{family}")


def build_vocab_map(student_tokenizer, teacher_tokenizer) -> VocabMap:
    """Match the two vocabularies by normalised text (see the module docstring)."""
    student_texts = normalised_vocabulary(student_tokenizer)
    teacher_texts = normalised_vocabulary(teacher_tokenizer)
    pairs = sorted((teacher_id, student_texts[text]) for text, teacher_id in teacher_texts.items()
                   if text in student_texts)
    teacher_ids = torch.tensor([t for t, _ in pairs], dtype=torch.long)
    student_ids = torch.tensor([s for _, s in pairs], dtype=torch.long)
    return VocabMap(teacher_ids, student_ids, len(teacher_tokenizer), len(student_tokenizer),
                    tokenizer_scheme(teacher_tokenizer)[0], tokenizer_scheme(student_tokenizer)[0],
                    same_family_size(student_tokenizer, teacher_tokenizer))


def vocabulary_fingerprint(tokenizer) -> str:
    """A hash of the vocabulary, its special ids and its scheme: equal for equal vocabularies."""
    described = [sorted(tokenizer.get_vocab().items()), sorted(tokenizer.all_special_ids), tokenizer_scheme(tokenizer)]
    return hashlib.sha256(json.dumps(described).encode()).hexdigest()


_MAPS: dict[tuple[str, str], VocabMap] = {}


def vocab_map(student_tokenizer, teacher_tokenizer) -> VocabMap:
    """`build_vocab_map`, built once per pair of vocabularies in this process and logged."""
    key = (vocabulary_fingerprint(student_tokenizer), vocabulary_fingerprint(teacher_tokenizer))
    if key not in _MAPS:
        _MAPS[key] = build_vocab_map(student_tokenizer, teacher_tokenizer)
        log.info(_MAPS[key].summary())
    return _MAPS[key]
