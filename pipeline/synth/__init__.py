"""Seeded, AU-driven renderer of the embedded demo data (DESIGN §8).

Modules, from the inside out: :mod:`~pipeline.synth.face` (identities, landmarks, neutral render),
:mod:`~pipeline.synth.au` (action-unit displacement fields, expressions, classes),
:mod:`~pipeline.synth.render` (frames over time: warps, blinks, head drift, light, noise),
:mod:`~pipeline.synth.writers` (JPEG, coding sheet, CSV, MPEG-4), :mod:`~pipeline.synth.demo` (the datasets).
"""

from pipeline.synth.demo import render_demo

__all__ = ["render_demo"]
