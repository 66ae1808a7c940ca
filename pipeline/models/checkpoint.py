"""Checking that a state dict fits a model before loading it, so a bad checkpoint fails with every reason."""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["check_state_fits"]


def check_state_fits(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise unless ``state`` has exactly ``own``'s keys with the same shapes.

    Args:
        own: the model's (sub-)state dict that ``state`` must fill.
        state: the state to load.
        what: names the state in the message (e.g. a checkpoint path).

    Raises:
        ValueError: lists every missing key, unexpected key and shape mismatch.
    """
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    mismatched = [f"{k}: {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        raise ValueError(f"{what} does not fit this model: missing {missing or 'none'}; "
                         f"unexpected {unexpected or 'none'}; shape mismatch {mismatched or 'none'}")
