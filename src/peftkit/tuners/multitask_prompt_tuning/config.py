"""MultitaskPromptTuningConfig: one shared prompt, scaled per task by a low-rank matrix (Wang et al., 2023)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ...utils.peft_types import PeftType
from ..prompt_tuning.config import PromptTuningConfig


class MultitaskPromptTuningInit(str, enum.Enum):
    """How the shared prompt and the task factors start: like prompt tuning (TEXT, RANDOM), or from a
    trained multitask adapter (`prompt_tuning_init_state_dict_path`): the average of its task factors,
    one task's factors (`prompt_tuning_init_task`), or only its shared prompt."""

    TEXT = "TEXT"
    RANDOM = "RANDOM"
    AVERAGE_SOURCE_TASKS = "AVERAGE_SOURCE_TASKS"
    EXACT_SOURCE_TASK = "EXACT_SOURCE_TASK"
    ONLY_SOURCE_SHARED = "ONLY_SOURCE_SHARED"


SOURCE_INITS = (
    MultitaskPromptTuningInit.AVERAGE_SOURCE_TASKS,
    MultitaskPromptTuningInit.EXACT_SOURCE_TASK,
    MultitaskPromptTuningInit.ONLY_SOURCE_SHARED,
)


@dataclass
class MultitaskPromptTuningConfig(PromptTuningConfig):
    """Configuration of multitask prompt tuning: the prompt of task t is `P * (U_t V_t)`, `P` the shared
    prompt (num_virtual_tokens x token_dim), `U_t` (num_virtual_tokens x num_ranks) and `V_t`
    (num_ranks x token_dim) the task's factors; forward and generate take `task_ids`."""

    prompt_tuning_init: MultitaskPromptTuningInit | str = field(
        default=MultitaskPromptTuningInit.RANDOM,
        metadata={"help": "RANDOM, TEXT, AVERAGE_SOURCE_TASKS, EXACT_SOURCE_TASK or ONLY_SOURCE_SHARED."},
    )
    prompt_tuning_init_state_dict_path: str | None = field(
        default=None,
        metadata={
            "help": "A trained multitask adapter's weights file (safetensors, or a torch file of tensors)."
        },
    )
    prompt_tuning_init_task: int | None = field(
        default=0, metadata={"help": "The source task whose factors EXACT_SOURCE_TASK copies."}
    )
    num_ranks: int | None = field(default=1, metadata={"help": "Rank of the task factors."})
    num_tasks: int | None = field(default=1, metadata={"help": "Number of tasks."})

    _init_enum = MultitaskPromptTuningInit

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prompt_tuning_init in SOURCE_INITS and not self.prompt_tuning_init_state_dict_path:
            raise ValueError(
                f"prompt_tuning_init={self.prompt_tuning_init.value} starts from a trained multitask adapter: set "
                "prompt_tuning_init_state_dict_path to its adapter_model.safetensors."
            )

    def _own_peft_type(self) -> PeftType:
        return PeftType.MULTITASK_PROMPT_TUNING
