"""Small conveniences around adapters (PEFT's `peft.helpers`)."""

from __future__ import annotations

import os

from .adapter_contexts import disable_input_dtype_casting, rescale_adapter_scale
from .config import PeftConfig
from .utils.signatures import update_forward_signature, update_generate_signature, update_signature

__all__ = [
    "check_if_peft_model",
    "disable_input_dtype_casting",
    "rescale_adapter_scale",
    "update_forward_signature",
    "update_generate_signature",
    "update_signature",
]


def check_if_peft_model(model_name_or_path: str | os.PathLike) -> bool:
    """Whether `model_name_or_path` (a local folder or a Hub repo id) holds a loadable adapter config.

    Args:
        model_name_or_path: the folder or repo id to check.

    Returns:
        True when its `adapter_config.json` exists and parses as a known adapter config, else False.
    """
    try:
        PeftConfig.from_pretrained(os.fspath(model_name_or_path))
    except Exception:  # any reason it cannot be loaded means "not a PEFT model" here, as in PEFT
        return False
    return True
