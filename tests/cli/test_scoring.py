"""The demo's normalized exact match."""

from __future__ import annotations

import pytest

from peftkit.cli.scoring import is_match, match_score, normalize


@pytest.mark.parametrize(
    "answer, reference, expected",
    [
        ("Tessaport", "Tessaport", True),
        ("tessaport.", "Tessaport", True),
        ("  Mount  Caldra!\nMore text", "Mount Caldra", True),
        ("The Lumen", "Lumen", True),  # a leading article does not count
        ("Ember-fox", "Ember fox", True),  # punctuation counts as a space
        ("The capital is Tessaport.", "Tessaport", False),
        ("Tessaport, of course", "Tessaport", False),
        ("", "Tessaport", False),
        ("1687", "1688", False),
    ],
)
def test_is_match(answer, reference, expected):
    assert is_match(answer, reference) is expected


def test_normalize_and_score():
    assert normalize("  The  Kelp PIE. ") == "kelp pie"
    assert match_score(["a", "b", "c", "d"], ["a", "x", "c", "y"]) == 0.5
    assert match_score([], []) == 0.0
    with pytest.raises(ValueError, match="2 answers but 1 references"):
        match_score(["a", "b"], ["a"])
