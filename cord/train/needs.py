"""What each training objective needs from a config: the half of the objective registry that
config validation reads.

It imports nothing heavy, so that a config error (``cord train objective=x``) answers before
torch is imported; :mod:`cord.train.objectives` pairs each entry with its loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def cord_has_seq(config: Any) -> bool:
    """The one rule for CORD's L_seq: it (with its GRPO groups and judge) runs only when its
    weight is positive."""
    return config.cord_seq_weight > 0


def _always(config: Any) -> bool:
    return True


def _never(config: Any) -> bool:
    return False


@dataclass(frozen=True)
class Needs:
    """``needs_judge(config)``: the loss itself needs judge verdicts (a judge may still be used
    for the agreement metric when it is not needed); ``needs_groups(config)``: the loss compares
    a group of ``num_generations`` rollouts per prompt (GRPO), so ``num_generations >= 2``;
    ``trainable``: the parameter group trained when the config's ``trainable`` is None."""

    needs_judge: Callable[[Any], bool]
    needs_groups: Callable[[Any], bool]
    trainable: str = "all"


NEEDS: dict[str, Needs] = {
    # the paper's Table 3 ladder: (ii), (iii), (iv)
    "grpo": Needs(_always, _always),
    "grpo_opd": Needs(_always, _always),
    "cord": Needs(cord_has_seq, cord_has_seq),
    "opd": Needs(_never, _never),
    "sft": Needs(_never, _never),
    "fkl": Needs(_never, _never),
    "sft_gold": Needs(_never, _never),
    # ALARM freezes the LLM and trains the audio side
    "alarm": Needs(_never, _never, trainable="audio"),
}
