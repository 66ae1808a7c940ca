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
from dataclasses import dataclass

from pipeline.config import ConfigError

__all__ = ["NATIVE", "PROTOCOLS", "Protocol", "check_protocol", "class_names", "map_emotion"]

NATIVE = "native"  # the dataset's own emotions, no fixed class list


@dataclass(frozen=True)
class Protocol:
    """A label protocol with a fixed class list.

    Attributes:
        classes: class names in label order.
        emotions: source dataset -> {emotion as annotated, lower case -> class name}; an emotion absent from
            its dataset's mapping lies outside the protocol.
    """

    classes: tuple[str, ...]
    emotions: dict[str, dict[str, str]]


_CASME2_5CLASS = ("happiness", "disgust", "repression", "surprise", "others")
_CASME2_3CLASS = {"disgust": "negative", "repression": "negative", "happiness": "positive", "surprise": "surprise"}

PROTOCOLS: dict[str, Protocol] = {  # micro.protocol -> protocol; with NATIVE, the one list of protocol names
    "casme2-5class": Protocol(_CASME2_5CLASS, {
        "casme2": {name: name for name in _CASME2_5CLASS},
        "demo": {name: name for name in _CASME2_5CLASS},  # the demo is annotated in CASME II's vocabulary
    }),
    "megc2019-3class": Protocol(("negative", "positive", "surprise"), {
        "casme2": _CASME2_3CLASS,
        "demo": _CASME2_3CLASS,
        "samm": {"anger": "negative", "contempt": "negative", "disgust": "negative", "fear": "negative",
                 "sadness": "negative", "happiness": "positive", "surprise": "surprise"},
        "smic": {"negative": "negative", "positive": "positive", "surprise": "surprise"},
        "casme3": {"anger": "negative", "disgust": "negative", "fear": "negative", "sad": "negative",
                   "happy": "positive", "surprise": "surprise"},
    }),
}


def check_protocol(protocol: str) -> str:
    """``protocol`` itself if it names a protocol (``micro.protocol``).

    Raises:
        ConfigError: an unknown protocol (the message lists the known ones).
    """
    if protocol != NATIVE and protocol not in PROTOCOLS:
        raise ConfigError(f"micro.protocol: {protocol!r} is not a label protocol; known: "
                          f"{', '.join([NATIVE, *PROTOCOLS])}")
    return protocol


def map_emotion(protocol: str, source_dataset: str, emotion: str) -> str | None:
    """The class name of ``emotion`` (as annotated in ``source_dataset``) under ``protocol``.

    Returns:
        The class name, or None when the emotion lies outside the protocol.

    Raises:
        ConfigError: unknown protocol.
        ValueError: no mapping of ``source_dataset`` under it.
    """
    key = emotion.strip().lower()
    if check_protocol(protocol) == NATIVE:
        return key or None
    emotions = PROTOCOLS[protocol].emotions
    if source_dataset not in emotions:
        raise ValueError(f"protocol {protocol!r} has no label mapping for dataset {source_dataset!r}; "
                         f"it has {sorted(emotions)}")
    return emotions[source_dataset].get(key)


def class_names(protocol: str, present: Iterable[str] = ()) -> list[str]:
    """Class names in label order: the protocol's fixed list, or for ``native`` the sorted names ``present``.

    Raises:
        ConfigError: unknown protocol.
    """
    if check_protocol(protocol) == NATIVE:
        return sorted(set(present))
    return list(PROTOCOLS[protocol].classes)
