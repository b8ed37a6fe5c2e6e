"""llama.cpp's GGUF format for LoRA adapters, both ways (needs `peftkit[gguf]`).

- `export_lora_to_gguf(adapter_dir, "adapter.gguf", base=...)`: a PEFT LoRA adapter (peft's or peftkit's)
  as a llama.cpp LoRA adapter, for llama.cpp (`--lora`), llama-cpp-python (`lora_path=`) and ollama
  (`ADAPTER`); f32, f16, bf16 or q8_0.
- `import_lora_from_gguf("adapter.gguf", adapter_dir)`: a llama.cpp LoRA adapter as a PEFT adapter folder.
- `read_gguf_lora` / `gguf_lora_factors`: the file's contents, and its factors in transformers' layout.
"""

from .base_model import BaseModelShape, describe_base_model
from .errors import GGUF_EXTRA, GGUFConversionError
from .export import EXPORT_DTYPES, GGUFExport, export_lora_to_gguf
from .importer import import_lora_from_gguf, lora_config_for
from .reader import GGUFLoraFile, gguf_lora_factors, read_gguf_lora

__all__ = [
    "EXPORT_DTYPES",
    "GGUF_EXTRA",
    "BaseModelShape",
    "GGUFConversionError",
    "GGUFExport",
    "GGUFLoraFile",
    "describe_base_model",
    "export_lora_to_gguf",
    "gguf_lora_factors",
    "import_lora_from_gguf",
    "lora_config_for",
    "read_gguf_lora",
]
