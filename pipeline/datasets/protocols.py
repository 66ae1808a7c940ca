"""Label protocols: how each dataset's emotion vocabulary maps onto the classes of a study.

- ``native``: the dataset's own emotions, lower-cased (``'Others'`` and ``'others'`` are one class); the
  classes are the emotions present, sorted.
- ``casme2-5class``: CASME II's happiness, disgust, repression, surprise, others (sadness and fear dropped), the
  common 5-class CASME II protocol (e.g. MMNet's).
- ``megc2019-3class``: the MEGC2019 composite protocol. CASME II: negative = disgust + repression,
  positive = happiness, surprise = surprise; SAMM: negative = anger, contempt, disgust, fear, sadness,
  positive = happiness, surprise = surprise; SMIC: its own negative / positive / surprise. CAS(ME)^3 (not in
  MEGC2019; the grouping of ``label_for_3`` in HTNet's ``cas(me)3_part_A_edited.csv``, SAMM's rule applied to
  CAS(ME)^3's words): negative = anger, disgust, fear, sad, positive = happy, surprise = surprise (others dropped).

An emotion outside a protocol maps to None: the row is dropped and counted, never relabelled. Adapters of other
datasets add their mapping here, one entry per (protocol, source dataset).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["FIXED_CLASSES", "PROTOCOLS", "class_names", "map_emotion"]

FIXED_CLASSES: dict[str, tuple[str, ...]] = {
    "casme2-5class": ("happiness", "disgust", "repression", "surprise", "others"),
    "megc2019-3class": ("negative", "positive", "surprise"),
}

# protocol -> source dataset -> {emotion (lower case) -> class name}
PROTOCOLS: dict[str, dict[str, dict[str, str]]] = {
    "casme2-5class": {
        "casme2": {name: name for name in FIXED_CLASSES["casme2-5class"]},
    },
    "megc2019-3class": {
        "casme2": {"disgust": "negative", "repression": "negative", "happiness": "positive",
                   "surprise": "surprise"},
        "samm": {"anger": "negative", "contempt": "negative", "disgust": "negative", "fear": "negative",
                 "sadness": "negative", "happiness": "positive", "surprise": "surprise"},
        "smic": {"negative": "negative", "positive": "positive", "surprise": "surprise"},
        "casme3": {"anger": "negative", "disgust": "negative", "fear": "negative", "sad": "negative",
                   "happy": "positive", "surprise": "surprise"},
    },
}

for _mapping in PROTOCOLS.values():  # the demo is annotated in CASME II's vocabulary
    _mapping["demo"] = _mapping["casme2"]


def map_emotion(protocol: str, source_dataset: str, emotion: str) -> str | None:
    """The class name of ``emotion`` (as annotated in ``source_dataset``) under ``protocol``, or None when the
    emotion lies outside it.

    Raises:
        ValueError: unknown protocol, or no mapping of ``source_dataset`` under it.
    """
    key = emotion.strip().lower()
    if protocol == "native":
        return key or None
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {sorted(PROTOCOLS) + ['native']}")
    if source_dataset not in PROTOCOLS[protocol]:
        raise ValueError(f"protocol {protocol!r} has no label mapping for dataset {source_dataset!r}; "
                         f"it has {sorted(PROTOCOLS[protocol])}")
    return PROTOCOLS[protocol][source_dataset].get(key)


def class_names(protocol: str, present: Iterable[str] = ()) -> list[str]:
    """Class names in label order: the protocol's fixed list, or for ``native`` the sorted names ``present``."""
    if protocol == "native":
        return sorted(set(present))
    return list(FIXED_CLASSES[protocol])
