"""Model cards on disk: how a final model's ``<arm>.json`` is recognised and read (writer: :mod:`pipeline.train.final`).

A card is a JSON object whose ``format`` is :data:`CARD_FORMAT`; ``format_version`` says which fields it has.
This module is small on purpose: readers (the report, ``ma2mi predict``) need it without the training code.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["CARD_FORMAT", "CARD_VERSION", "PREPROCESSING_KEYS", "NotAModelCardError", "read_card", "read_cards"]

CARD_FORMAT = "ma2mi-model-card"
CARD_VERSION = 1
# the micro params a card's "preprocessing" quotes, which ma2mi predict applies to a new clip as training did
PREPROCESSING_KEYS = ("detector", "box_scale", "align_margin", "image_size_px", "optical_flow")


class NotAModelCardError(ValueError):
    """The file is not a model card (or its weights are missing or do not fit); the message names it."""


def read_card(path: Path) -> dict:
    """The model card at ``path``.

    Raises:
        NotAModelCardError: no such file, not JSON, or not a card (no ``"format": "ma2mi-model-card"``).
    """
    if not path.is_file():
        raise NotAModelCardError(f"{path}: no such model card")
    try:
        card = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise NotAModelCardError(f"{path}: not a model card (not JSON: {err})") from err
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise NotAModelCardError(f"{path}: not a model card (no \"format\": \"{CARD_FORMAT}\"; the final_<arm> "
                                 "stages write them, e.g. models/final/ma2mi.json)")
    return card


def read_cards(folder: Path) -> list[dict]:
    """Every model card among the ``*.json`` files of ``folder`` (others are skipped), by file name."""
    cards = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            cards.append(read_card(path))
        except NotAModelCardError:
            continue
    return cards
