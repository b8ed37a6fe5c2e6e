"""peftkit's method tables hold what peft 0.21.2's hold: every PeftType, the same prefixes, tuner classes of
the same names, and peft's two mixed-model lists (the mapping and what its PeftMixedModel accepts)."""

from __future__ import annotations

from types import SimpleNamespace

import peft
import peft.mapping as theirs
import pytest
from peft.tuners.mixed.model import COMPATIBLE_TUNER_TYPES as PEFT_COMPATIBLE

import peftkit
import peftkit.mapping as ours
from peftkit.tuners.mixed.model import COMPATIBLE_TUNER_TYPES, check_mixable


def _by_value(mapping) -> dict:
    return {getattr(k, "value", k): v for k, v in mapping.items()}


@pytest.mark.parametrize(
    "table",
    [
        "PEFT_TYPE_TO_CONFIG_MAPPING",
        "PEFT_TYPE_TO_TUNER_MAPPING",
        "PEFT_TYPE_TO_PREFIX_MAPPING",
        "PEFT_TYPE_TO_MIXED_MODEL_MAPPING",
    ],
)
def test_table_has_peft_s_keys(table):
    assert set(_by_value(getattr(ours, table))) == set(_by_value(getattr(theirs, table)))


def test_all_45_peft_types_are_registered():
    assert len(ours.PEFT_TYPE_TO_CONFIG_MAPPING) == len(peft.PeftType) == len(peftkit.PeftType) == 45


def test_prefixes_are_peft_s():
    assert _by_value(ours.PEFT_TYPE_TO_PREFIX_MAPPING) == _by_value(theirs.PEFT_TYPE_TO_PREFIX_MAPPING)


@pytest.mark.parametrize("table", ["PEFT_TYPE_TO_CONFIG_MAPPING", "PEFT_TYPE_TO_TUNER_MAPPING"])
def test_classes_have_peft_s_names_and_are_exported_where_peft_exports_them(table):
    mine, peft_s = _by_value(getattr(ours, table)), _by_value(getattr(theirs, table))
    for peft_type, cls in peft_s.items():
        assert mine[peft_type].__name__ == cls.__name__, peft_type
        if hasattr(peft, cls.__name__):
            assert getattr(peftkit, cls.__name__) is mine[peft_type], peft_type


def test_mixed_models_accept_exactly_what_peft_s_accept():
    assert [t.value for t in COMPATIBLE_TUNER_TYPES] == [t.value for t in PEFT_COMPATIBLE]
    for peft_type in peftkit.PeftType:
        accepted = peft_type.value in {t.value for t in PEFT_COMPATIBLE}
        if accepted:
            check_mixable(SimpleNamespace(peft_type=peft_type))
        else:
            with pytest.raises(ValueError, match="not compatible with the `PeftMixedModel`"):
                check_mixable(SimpleNamespace(peft_type=peft_type))
