"""`create_arrow_model`: a PeftModel that routes each token among trained LoRA task adapters (Arrow).

The task adapters are loaded as `task_0`, `task_1`, ... (and, for GenKnowSub, the general adapters as
`gks_0`, ...), checked to share their rank, shapes and target modules, and a router adapter
"arrow_router" (`LoraConfig(arrow_config=...)`) is added on those modules and made active. The routing
itself is `peftkit.tuners.lora.arrow`.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from .peft_model import PeftModel
from .tuners.lora import LoraConfig
from .tuners.lora.arrow import (
    GKS_ADAPTER_PREFIX,
    ROUTER_ADAPTER_NAME,
    TASK_ADAPTER_PREFIX,
    check_loaded_lora_compatibility_arrow,
    ensure_adapters_target_linear_layers_only,
)
from .tuners.lora.sub_configs import ArrowConfig

__all__ = ["create_arrow_model"]


def _resolve_adapter_source(path: str) -> tuple[str, str | None]:
    """(model_id, subfolder) of an adapter path: a local folder holding adapter_config.json, a Hub repo
    "user/repo", or a sub-folder of one, "user/repo/sub/folder"."""
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "adapter_config.json")):
            raise ValueError(f"Local adapter path '{path}' does not contain 'adapter_config.json'.")
        return path, None
    parts = path.strip("/").split("/")
    if len(parts) > 2:
        return "/".join(parts[:2]), "/".join(parts[2:])
    return path, None


def _load(model: Any, path: str, adapter_name: str, adapter_kwargs: dict[str, Any]) -> Any:
    """Load the adapter at `path` into `model` as `adapter_name` (the first one makes the PeftModel)."""
    model_id, subfolder = _resolve_adapter_source(path)
    kwargs = dict(adapter_kwargs)
    if subfolder is not None:
        kwargs.setdefault("subfolder", subfolder)
    if isinstance(model, PeftModel):
        model.load_adapter(model_id, adapter_name=adapter_name, **kwargs)
        return model
    return PeftModel.from_pretrained(model, model_id, adapter_name=adapter_name, **kwargs)


def create_arrow_model(
    base_model: nn.Module,
    task_specific_adapter_paths: list[str],
    arrow_config: ArrowConfig,
    general_adapter_paths: list[str] | None = None,
    **adapter_kwargs: Any,
) -> PeftModel:
    """Load the task adapters (and, with `arrow_config.use_gks`, the general ones) onto `base_model` and
    add the active Arrow router. `adapter_kwargs` go to each adapter's loading (e.g. `revision`).

    The adapters must be LoRA adapters of linear layers with one rank and the same targets. The router
    adapts exactly the layers the task adapters adapt.
    """
    if not task_specific_adapter_paths:
        raise ValueError("`task_specific_adapter_paths` should contain at least one adapter path")
    if arrow_config.use_gks and not general_adapter_paths:
        raise ValueError("You should provide general LoRA paths if you want to use GenKnowSub.")
    if arrow_config.top_k > len(task_specific_adapter_paths):
        raise ValueError(
            f"ArrowConfig.top_k={arrow_config.top_k} is larger than the number of task adapters "
            f"({len(task_specific_adapter_paths)}); lower top_k or pass more adapters."
        )
    model: Any = base_model
    task_names = [f"{TASK_ADAPTER_PREFIX}{i}" for i in range(len(task_specific_adapter_paths))]
    for name, path in zip(task_names, task_specific_adapter_paths):
        model = _load(model, path, name, adapter_kwargs)
    general = list(general_adapter_paths or []) if arrow_config.use_gks else []
    gks_names = [f"{GKS_ADAPTER_PREFIX}{i}" for i in range(len(general))]
    for name, path in zip(gks_names, general):
        model = _load(model, path, name, adapter_kwargs)
    arrow_config.task_adapter_names, arrow_config.gks_adapter_names = task_names, gks_names

    ensure_adapters_target_linear_layers_only(model, task_names + gks_names)
    targets, r = check_loaded_lora_compatibility_arrow(model, task_names + gks_names)
    model.add_adapter(ROUTER_ADAPTER_NAME, LoraConfig(arrow_config=arrow_config, target_modules=targets, r=r))
    model.set_adapter(ROUTER_ADAPTER_NAME)
    return model
