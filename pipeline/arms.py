"""The arms of the ablation (DESIGN §5): the one list of arm names (``finetune_<arm>@<fold>`` stages).

Every arm trains on the same LOSO folds and seeds; they differ in the model, its initialisation and the arm's
changes to the shared recipe (``finetune.arm_recipes``: :meth:`pipeline.config.FinetuneParams.arm_recipe`).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import FinetuneParams

__all__ = ["ARMS", "Arm", "active_arms", "arm_label"]


@dataclass(frozen=True)
class Arm:
    """One arm of the ablation.

    Attributes:
        description: what it is, for people.
        pretrained: MIACNet's branches start from MA2MI's ``encoder.pt`` (else from random initialisation).
        baseline: the model is ``finetune.baseline.model`` (else MIACNet); the arm runs only where
            ``finetune.baseline.folds`` is not empty.
        label_efficiency: the arm also trains on the label budgets of ``finetune.label_budgets`` (the curve
            compares pre-training with none).
    """

    description: str
    pretrained: bool = False
    baseline: bool = False
    label_efficiency: bool = False


ARMS: dict[str, Arm] = {
    "ma2mi": Arm("MIACNet, branches from MA2MI pre-training", pretrained=True, label_efficiency=True),
    "scratch": Arm("MIACNet from random initialisation (the ablation of pre-training)", label_efficiency=True),
    "baseline": Arm("a published model (finetune.baseline.model) from random initialisation", baseline=True),
}


def active_arms(params: FinetuneParams) -> list[str]:
    """The arms that run and that evaluate compares, in :data:`ARMS` order.

    The baseline arm is included only when ``finetune.baseline.folds`` is not empty.
    """
    return [name for name, arm in ARMS.items() if not arm.baseline or params.baseline.folds]


def arm_label(params: FinetuneParams, arm: str) -> str:
    """The name results carry: the arm's, but the model's for the baseline (e.g. ``mmnet``).

    Raises:
        KeyError: not an arm of :data:`ARMS`.
    """
    return params.baseline.model if ARMS[arm].baseline else arm
