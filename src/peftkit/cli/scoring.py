"""Scoring generated answers against reference answers with a normalized exact match.

An answer counts as correct when, after normalization, it equals the reference. Normalization keeps the
first line only, lower-cases, drops punctuation, a leading article (a/an/the) and repeated whitespace.
So "Tessaport." and "tessaport" match "Tessaport", while "The capital is Tessaport." does not.
"""

from __future__ import annotations

import re
import string

_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")
_ARTICLE = re.compile(r"^(a|an|the)\s+")


def normalize(text: str) -> str:
    """The normalized form of an answer (see the module docstring)."""
    lines = text.strip().splitlines()
    first = lines[0] if lines else ""
    words = _PUNCTUATION.sub(" ", first.lower()).split()
    return _ARTICLE.sub("", " ".join(words))


def is_match(answer: str, reference: str) -> bool:
    """Whether `answer` matches `reference` after normalization."""
    return normalize(answer) == normalize(reference)


def match_score(answers: list[str], references: list[str]) -> float:
    """The fraction of answers that match their reference (0.0 for no answers)."""
    if len(answers) != len(references):
        raise ValueError(f"{len(answers)} answers but {len(references)} references.")
    if not answers:
        return 0.0
    return sum(is_match(a, r) for a, r in zip(answers, references)) / len(answers)
