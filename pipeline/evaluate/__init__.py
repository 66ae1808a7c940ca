"""Evaluation (DESIGN §6): MER metrics, the ablation side by side, the probe, where the models look.

:mod:`.metrics` (accuracy, UF1, UAR, seed summaries), :mod:`.ablation` (the ``evaluate`` stage),
:mod:`.summary` (the Markdown table ``make demo`` prints), :mod:`.probe` (linear probe of a frozen encoder),
:mod:`.localisation` and :mod:`.attention` (heat maps scored against the demo's AU regions).
"""
