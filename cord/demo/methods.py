"""The demo's methods: one row of its tables each, a label and the trainer settings that make
it. Light on purpose (no torch): ``cord demo --help`` lists them without importing the trainer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Method:
    """One row of the demo's tables: a label and the trainer settings that make it."""

    label: str
    objective: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    data: str = "pool"
    """The split of the task it post-trains on (every competitor: the distillation pool)."""


#: The paper's Table 1 baselines, its Table 3 ladder and the Figure 4 sweep (α = β).
METHODS: dict[str, Method] = {
    "sft": Method("+ SFT", "sft"),
    "fkl": Method("+ Forward KL", "fkl"),
    "grpo": Method("+ GRPO", "grpo"),
    "grpo_opd": Method("+ GRPO + OPD", "grpo_opd"),
    "cord": Method("+ CORD", "cord"),
    "cord_ab1": Method("+ CORD α=β=1", "cord", {"cord_alpha": 1.0, "cord_position_beta": 1.0}),
    "cord_ab3": Method("+ CORD α=β=3", "cord", {"cord_alpha": 3.0, "cord_position_beta": 3.0}),
    # positive controls, not competitors: SFT on the gold chains instead of the teacher's
    # samples (in-domain), and on gold chains of the transfer task itself (spoken comparisons
    # disjoint from the transfer set): they show how far the metrics can move in the budget
    "sft_gold": Method("+ gold SFT (in-domain control)", "sft_gold"),
    "sft_gold_transfer": Method("+ gold SFT on comparisons (transfer control)", "sft_gold",
                                data="compare_pool"),
    # the full mode's text-side-fixed variants: only the audio encoder and projector train, so
    # the live teacher (the text side) does not drift with the student
    "sft_audio": Method("+ SFT (audio side only)", "sft", {"trainable": "audio"}),
    "fkl_audio": Method("+ Forward KL (audio side only)", "fkl", {"trainable": "audio"}),
    "cord_audio": Method("+ CORD (audio side only)", "cord", {"trainable": "audio"}),
}
TABLE1 = ("sft", "fkl", "cord")
TABLE3 = ("grpo", "grpo_opd", "cord")
DEFAULT_METHODS = ("sft", "fkl", "grpo", "grpo_opd", "cord")
