"""ShadowConfig: the fields PEFT 0.21 writes for ShadowPEFT, with the same names and defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import PeftConfig, as_set
from ...utils.peft_types import PeftType
from .._config_checks import check_layer_selection, is_positive_int

# the shadow-backbone sizes that only a "mirror" backbone (built here, not loaded) can take
MIRROR_ONLY_FIELDS = (
    "shadow_num_hidden_layers",
    "shadow_hidden_size",
    "shadow_num_attention_heads",
    "shadow_intermediate_size",
)


@dataclass
class ShadowConfig(PeftConfig):
    """Configuration of ShadowPEFT: a small trainable *shadow* network runs beside the frozen decoder.

    A shadow backbone turns the inputs into a shadow state `s0` (width of the base model). At every
    wrapped decoder block l, the gap between the block input and the shadow state is injected into the
    input, `h <- h + shadow_alpha * W_up dropout(W_down (h - s))`, and after the block the shadow state
    follows the output through a gate, `s <- (1 - g) s + g T(h_out)`, `g = sigmoid(G(h_out))`. The state
    depends on the input, so the adaptation cannot be merged into the weights. With labels, an auxiliary
    loss on the shadow backbone's own prediction (`auxiliary_loss_weight`) trains it to stand alone.

    `target_modules` names whole decoder blocks (default: all of them), which must be consecutive.
    """

    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Decoder blocks to wrap (whole blocks, consecutive); None: every decoder block."},
    )
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Blocks never wrapped."})
    r: int = field(default=8, metadata={"help": "Rank of the injection bottleneck W_down / W_up."})
    shadow_alpha: float = field(
        default=0.1, metadata={"help": "Strength of the correction injected into each block's input."}
    )
    shadow_dropout: float = field(
        default=0.2, metadata={"help": "Dropout on the gap h - s before the bottleneck."}
    )
    init_weights: bool = field(
        default=True, metadata={"help": "True: W_up starts at zero, so the injection starts as a no-op."}
    )
    shadow_model: str = field(
        default="mirror",
        metadata={
            "help": "'mirror': a fresh backbone of the base architecture, smaller (shadow_* sizes); any other "
            "string: a model id or local folder to load the backbone from."
        },
    )
    shadow_num_hidden_layers: int | None = field(
        default=None, metadata={"help": "Layers of the mirror backbone (None: 1)."}
    )
    shadow_hidden_size: int | None = field(
        default=None,
        metadata={
            "help": "Hidden size of the mirror backbone (None: the base's; else a projection is added)."
        },
    )
    shadow_num_attention_heads: int | None = field(
        default=None, metadata={"help": "Attention heads of the mirror backbone (None: the base's)."}
    )
    shadow_intermediate_size: int | None = field(
        default=None, metadata={"help": "Feed-forward width of the mirror backbone (None: the base's)."}
    )
    share_embeddings: bool = field(
        default=True,
        metadata={
            "help": "Feed the mirror backbone the frozen base input embeddings instead of its own table."
        },
    )
    update_hidden_size: int | None = field(
        default=None, metadata={"help": "Hidden width of the update MLPs T and G (None: r)."}
    )
    auxiliary_loss_weight: float = field(
        default=0.05,
        metadata={"help": "Weight of the shadow backbone's own task loss added to the loss (0: off)."},
    )
    layers_to_transform: list[int] | int | None = field(default=None, metadata={"help": "Block indices."})
    layers_pattern: list[str] | str | None = field(
        default=None, metadata={"help": "Name of the block list (e.g. 'layers' or 'h')."}
    )
    modules_to_save: list[str] | None = field(default=None, metadata={"help": "Modules trained in full."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.SHADOW
        self.target_modules = as_set(self.target_modules)
        self.exclude_modules = as_set(self.exclude_modules)
        check_layer_selection(self)
        if self.shadow_model != "mirror":
            configured = [name for name in MIRROR_ONLY_FIELDS if getattr(self, name) is not None]
            if configured:
                raise ValueError(
                    "Explicit `shadow_model` checkpoints define their architecture; unset these mirror-only "
                    f"overrides: {', '.join(configured)}."
                )
        self._check_sizes()

    def _check_sizes(self) -> None:
        """Values peft accepts here and fails on later, when the layers are built."""
        if not is_positive_int(self.r):
            raise ValueError(f"`r` should be a positive integer value, got {self.r!r}.")
        if not 0.0 <= self.shadow_dropout <= 1.0:
            raise ValueError(
                f"`shadow_dropout` must be a probability in [0, 1], got {self.shadow_dropout!r}."
            )
        for name in (*MIRROR_ONLY_FIELDS, "update_hidden_size"):
            value = getattr(self, name)
            # 0 means "the default" for the two sizes peft reads with `or` (layers: 1, update width: r)
            smallest = 0 if name in ("shadow_num_hidden_layers", "update_hidden_size") else 1
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < smallest
            ):
                raise ValueError(f"`{name}` must be an integer >= {smallest} or None, got {value!r}.")
