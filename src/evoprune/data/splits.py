"""Assign every document to exactly one split by a hash of its text, so splits cannot overlap.

A document's digest is the SHA-1 of its normalized text (whitespace collapsed, case folded),
read as a number `u` in [0, 1). The unit interval is cut into consecutive ranges in the order
eval, calibration, train; the range holding `u` is the document's split. Identical documents (and
ones differing only in case or spacing) therefore always share a split, the assignment does not
depend on document order or on the other documents, and changing the calibration/train
fractions never moves a document into or out of `eval`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import astuple, dataclass
from typing import Mapping

from ..errors import UserError

SPLITS = ("eval", "calibration", "train")
_DIGITS = 13  # hex digits read from the digest: 52 bits, exact in a float


@dataclass(frozen=True)
class SplitFractions:
    """Share of documents (by hash, so only approximately of text) that each split receives."""

    eval: float = 0.1
    calibration: float = 0.1
    train: float = 0.8

    def __post_init__(self) -> None:
        values = astuple(self)
        if not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in values) or not math.isclose(
                sum(values), 1.0, abs_tol=1e-6):
            raise UserError(f"split fractions must be in [0, 1] and sum to 1, got eval={self.eval}, "
                            f"calibration={self.calibration}, train={self.train}")

    @classmethod
    def coerce(cls, value: SplitFractions | Mapping[str, float]) -> SplitFractions:
        if isinstance(value, SplitFractions):
            return value
        unknown = set(value) - set(SPLITS)
        if unknown:
            raise UserError(f"unknown split name(s) {', '.join(sorted(unknown))}; splits are {', '.join(SPLITS)}")
        return cls(**value)

    def split_at(self, u: float) -> str:
        """The split whose range of [0, 1) holds `u`."""
        upper = 0.0
        for name in SPLITS:
            upper += getattr(self, name)
            if u < upper:
                return name
        return next(name for name in reversed(SPLITS) if getattr(self, name) > 0)


DEFAULT_FRACTIONS = SplitFractions()


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")


def document_digest(text: str) -> str:
    """SHA-1 hex digest of `text` with whitespace collapsed and case folded."""
    return hashlib.sha1(" ".join(text.split()).casefold().encode("utf-8")).hexdigest()


def digest_position(digest: str) -> float:
    """A hex digest read as a number in [0, 1)."""
    return int(digest[:_DIGITS], 16) / 16**_DIGITS


def split_of(text: str, fractions: SplitFractions = DEFAULT_FRACTIONS) -> str:
    """The split that document `text` belongs to."""
    return fractions.split_at(digest_position(document_digest(text)))


def split_documents(documents: list[str], fractions: SplitFractions | Mapping[str, float] = DEFAULT_FRACTIONS
                    ) -> dict[str, list[str]]:
    """Deduplicate `documents` and group them by split, each split ordered by digest.

    Ordering by digest interleaves the sources of a mixed corpus, so a prefix of a split's
    packed blocks is a fair sample of all of it.
    """
    fractions = SplitFractions.coerce(fractions)
    by_digest: dict[str, str] = {}
    for text in documents:
        by_digest.setdefault(document_digest(text), text)
    groups: dict[str, list[str]] = {name: [] for name in SPLITS}
    for digest in sorted(by_digest):
        groups[fractions.split_at(digest_position(digest))].append(by_digest[digest])
    return groups
