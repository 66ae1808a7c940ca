"""Label protocols: how each dataset's emotion vocabulary maps onto the classes a study uses.

``megc2019-3class`` is the MEGC2019 composite protocol (negative / positive / surprise). Its CASME II mapping
follows the MEGC2019 ground truth: negative = disgust + repression, positive = happiness, surprise = surprise;
others, sadness and fear are outside the protocol (dropped and counted, never relabelled).
"""

from __future__ import annotations

__all__ = ["PROTOCOLS", "class_names", "map_emotion"]

# protocol -> (class names in label order, {dataset -> {emotion (lower case) -> class name}})
PROTOCOLS: dict[str, tuple[tuple[str, ...], dict[str, dict[str, str]]]] = {
    "megc2019-3class": (
        ("negative", "positive", "surprise"),
        {
            "casme2": {
                "disgust": "negative",
                "repression": "negative",
                "happiness": "positive",
                "surprise": "surprise",
            },
        },
    ),
}


def class_names(protocol: str) -> tuple[str, ...]:
    """Class names of ``protocol`` in label order (label ``i`` is ``class_names(protocol)[i]``)."""
    try:
        return PROTOCOLS[protocol][0]
    except KeyError:
        raise ValueError(f"unknown protocol {protocol!r}; known: {sorted(PROTOCOLS)}") from None


def map_emotion(protocol: str, source_dataset: str, emotion: str) -> str | None:
    """The class name of ``emotion`` (a ``source_dataset`` annotation) under ``protocol``, or None when the
    emotion lies outside the protocol.

    Raises:
        ValueError: unknown protocol, or no mapping of ``source_dataset`` under it.
    """
    names = class_names(protocol)
    mappings = PROTOCOLS[protocol][1]
    if source_dataset not in mappings:
        raise ValueError(f"protocol {protocol!r} has no label mapping for dataset {source_dataset!r}")
    mapped = mappings[source_dataset].get(emotion.strip().lower())
    assert mapped is None or mapped in names
    return mapped
