"""docs/adding-a-method.md stays true: every hook its tables name exists on the framework class, and the
worked example's code is the method's code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from peftkit.tuners._tuner_layer import BaseTunerLayer
from peftkit.tuners.tuners_utils import BaseTuner

GUIDE = (Path(__file__).parent.parent / "docs" / "adding-a-method.md").read_text()


def _hooks(heading: str) -> list[str]:
    """The backticked names in the first column of the table under `### <heading>`."""
    section = GUIDE.split(f"### {heading}\n", 1)[1].split("\n#", 1)[0]
    names = []
    for row in section.splitlines():
        if row.startswith("| `"):
            first_cell = row.split("|")[1]
            names += [re.sub(r"\(.*", "", n) for n in re.findall(r"`([^`]+)`", first_cell)]
    return names


@pytest.mark.parametrize(
    ("heading", "cls"),
    [
        ("Layer (`BaseTunerLayer`): must", BaseTunerLayer),
        ("Layer: may", BaseTunerLayer),
        ("Tuner (`BaseTuner`): must", BaseTuner),
        ("Tuner: may", BaseTuner),
    ],
)
def test_every_hook_in_the_tables_exists(heading, cls):
    names = _hooks(heading)
    assert len(names) >= 4, f"no hooks read under {heading!r}"
    from peftkit.tuners._premerge import PremergeWeightMixin
    from peftkit.tuners.fourierft import FourierFTLinear
    from peftkit.tuners.lora import LoraModel

    # `__init__`/`update_layer`/`add_weighted_adapter` are a method's own; look them up on real methods
    # (and the optional mixins')
    owners = (cls, FourierFTLinear, LoraModel, PremergeWeightMixin)
    missing = [n for n in names if not any(hasattr(owner, n) for owner in owners)]
    assert missing == [], f"the guide names hooks that do not exist: {missing}"


def test_the_worked_example_shows_the_method_s_code():
    source = (Path(__file__).parent.parent / "src/peftkit/tuners/fourierft/model.py").read_text()
    for line in (
        'prefix = "fourierft_"',
        "layer_classes = {nn.Linear: FourierFTLinear, CONV1D: FourierFTLinear}",
        "pattern = get_pattern_key(config.n_frequency_pattern.keys(), key)",
    ):
        assert line in source and line in GUIDE, line
