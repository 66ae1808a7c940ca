"""One self-contained HTML page of a run (DESIGN §10): opens offline, every image embedded as a data URI.

:func:`build_report` turns what the stages wrote into HTML: the ablation (per arm mean ± std over seeds, each
seed's values, the paired MA2MI − scratch difference), the figures of ``evaluate``, confusion matrices,
per-subject and per-dataset tables, training curves, the heat maps of held-out clips and their localisation
scores (``attention``), MA2MI's pre-training examples, and the final models' cards. Plain string templates with
every value escaped (:func:`html.escape`); CSS inline; no script, no external URL (no CDN, no font, no link), so
the file is the whole report.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

from pipeline.evaluate.metrics import BASELINE_DIFFERENCE, DIFFERENCE, SCORES
from pipeline.evaluate.summary import arm_entries, format_mean_std, localisation_rows

__all__ = ["ReportInputs", "build_report", "image_tag"]

SCORE_NAMES = {"accuracy": "accuracy", "uf1": "UF1", "uar": "UAR"}

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 72rem;
       padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; } h2 { font-size: 1.25rem; margin-top: 2.2rem;
  border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; } h3 { font-size: 1.05rem; }
p.meta { color: #555; font-size: 0.9rem; } .note { color: #555; font-size: 0.9rem; }
table { border-collapse: collapse; margin: 0.6rem 0 1rem; font-size: 0.88rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.55rem; text-align: right; }
th { background: #f2f2f4; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; height: auto; border: 1px solid #eee; margin: 0.4rem 0; }
nav a { margin-right: 0.8rem; font-size: 0.9rem; } code { font-size: 0.85rem; }
.cards { display: flex; flex-wrap: wrap; gap: 1rem; } .card { border: 1px solid #ddd; padding: 0.6rem 0.9rem;
  border-radius: 6px; flex: 1 1 22rem; font-size: 0.88rem; }
"""


@dataclass
class ReportInputs:
    """What the report shows; every part but ``metrics`` may be missing (the section then says so).

    Attributes:
        metrics: evaluate's ``metrics.json``.
        per_seed: evaluate's ``per_seed.csv`` (``arm, seed, accuracy, uf1, uar, n``).
        per_subject, per_dataset: evaluate's tables (``arm``, the group, the scores, ``n``).
        confusions: arm label -> rows ``actual, predicted`` (class names; evaluate's ``confusion/<arm>.csv``).
        classes: class names in label order.
        figures: evaluate's PNG figures by file name (``ablation.png``, ``confusion.png``, ``curves.png``, …).
        localisation: the attention stage's ``metrics.json``, or None.
        heatmap_examples: the attention stage's ``examples.png``, or None.
        pretrain_metrics: the pretrain stage's ``metrics.json``, or None.
        pretrain_examples: PNG of :func:`pipeline.report.pretrain_examples.pairs_figure`, or None.
        pretrain_note: why there are no pre-training examples, if so.
        cards: the final models' cards (:func:`pipeline.train.final.model_card`).
    """

    metrics: Mapping
    per_seed: pd.DataFrame
    per_subject: pd.DataFrame
    per_dataset: pd.DataFrame
    confusions: Mapping[str, pd.DataFrame]
    classes: Sequence[str]
    figures: Mapping[str, bytes]
    localisation: Mapping | None = None
    heatmap_examples: bytes | None = None
    pretrain_metrics: Mapping | None = None
    pretrain_examples: bytes | None = None
    pretrain_note: str = ""
    cards: list[Mapping] = field(default_factory=list)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def image_tag(png: bytes, alt: str) -> str:
    """``<img>`` with the PNG embedded as a base64 data URI (no file, no URL)."""
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _table(frame: pd.DataFrame, digits: int = 3) -> str:
    return frame.to_html(index=False, border=0, float_format=lambda v: f"{v:.{digits}f}", na_rep="–", escape=True)


def _ablation(inputs: ReportInputs) -> str:
    arms = arm_entries(inputs.metrics)
    rows = []
    for label, entry in arms.items():
        seeds = inputs.per_seed[inputs.per_seed["arm"] == label].sort_values("seed")
        per_seed = "; ".join(f"seed {int(r.seed)}: " + ", ".join(f"{getattr(r, s):.3f}" for s in SCORES)
                             for r in seeds.itertuples(index=False))
        rows.append([label, *(format_mean_std(entry, s) for s in SCORES), entry["n"], entry.get("seeds", ""),
                     per_seed])
    if DIFFERENCE in inputs.metrics and {"ma2mi", "scratch"} <= set(inputs.per_seed["arm"]):
        paired = inputs.per_seed.pivot(index="seed", columns="arm", values=list(SCORES))
        per_seed = "; ".join(f"seed {int(seed)}: " + ", ".join(
            f"{paired[s]['ma2mi'][seed] - paired[s]['scratch'][seed]:+.3f}" for s in SCORES) for seed in paired.index)
        difference = inputs.metrics[DIFFERENCE]
        rows.append(["MA2MI − scratch (paired by seed)", *(format_mean_std(difference, s, signed=True)
                                                          for s in SCORES), "", difference.get("seeds", ""), per_seed])
    best = inputs.metrics.get(BASELINE_DIFFERENCE, {}).get("baseline")
    if best is not None and {"ma2mi", best} <= set(inputs.per_seed["arm"]):
        paired = inputs.per_seed.pivot(index="seed", columns="arm", values=list(SCORES))
        per_seed = "; ".join(f"seed {int(seed)}: " + ", ".join(
            f"{paired[s]['ma2mi'][seed] - paired[s][best][seed]:+.3f}" for s in SCORES) for seed in paired.index)
        difference = inputs.metrics[BASELINE_DIFFERENCE]
        rows.append([f"MA2MI − {best} (best baseline, paired by seed)",
                     *(format_mean_std(difference, s, signed=True) for s in SCORES), "", difference.get("seeds", ""),
                     per_seed])
    table = pd.DataFrame(rows, columns=["arm", "accuracy", "UF1", "UAR", "n per seed", "seeds",
                                        "each seed (accuracy, UF1, UAR)"])
    return (f"{_table(table)}<p class=note>Scores of the pooled predictions of all LOSO folds, per seed; mean ± "
            "sample std over seeds. The differences pair MA2MI seed by seed (same folds) with MIACNet from scratch "
            "and with the baseline of the best mean UF1.</p>"
            + _figure(inputs.figures, "ablation.png", "Ablation: mean ± std over seeds, dots: seeds"))


def _figure(figures: Mapping[str, bytes], name: str, caption: str) -> str:
    if name not in figures:
        return f"<p class=note>{_e(name)} was not written.</p>"
    return f"<figure>{image_tag(figures[name], caption)}<figcaption class=note>{_e(caption)}</figcaption></figure>"


def _confusions(inputs: ReportInputs) -> str:
    parts = [_figure(inputs.figures, "confusion.png", "Confusion matrices, all seeds' predictions")]
    for label, rows in inputs.confusions.items():
        counts = pd.crosstab(pd.Categorical(rows["actual"], categories=inputs.classes),
                             pd.Categorical(rows["predicted"], categories=inputs.classes), dropna=False)
        counts.index.name, counts.columns.name = "true \\ predicted", None
        parts.append(f"<h3>{_e(label)}</h3>" + _table(counts.reset_index(), digits=0))
    return "".join(parts)


def _groups(frame: pd.DataFrame, group: str) -> str:
    if frame.empty:
        return "<p class=note>No rows.</p>"
    wide = frame.pivot_table(index=group, columns="arm", values=list(SCORES), sort=True)
    wide.columns = [f"{arm} {SCORE_NAMES[score]}" for score, arm in wide.columns]
    wide = wide[sorted(wide.columns, key=lambda c: (c.split(" ")[0], c))]
    counts = frame.groupby(group)["n"].first().rename("n (all seeds)")
    return _table(wide.join(counts).reset_index())


def _localisation(inputs: ReportInputs) -> str:
    parts = []
    loc = inputs.localisation
    if loc is None:
        parts.append("<p class=note>The attention stage's metrics are missing.</p>")
    elif not loc.get("ground_truth"):
        parts.append(f"<p>{_e(loc.get('note', 'No ground truth for this dataset.'))}</p>")
    else:
        rows = []
        for label, entry in localisation_rows(loc):
            signed = label == DIFFERENCE
            rows.append(["MA2MI − scratch (paired)" if signed else label,
                         format_mean_std(entry, "mass_in_region", signed=signed),
                         format_mean_std(entry, "pointing_hit_rate", signed=signed),
                         (f"{format_mean_std(entry, 'grid_pointing_hit_rate')} ({entry['grid']}; chance "
                          f"{entry['grid_chance']:.3f})" if "grid_pointing_hit_rate" in entry else ""),
                         entry.get("seeds", ""), entry.get("clips", ""), entry.get("flat", "")])
        parts.append(_table(pd.DataFrame(rows, columns=["arm", "heat-map mass in the AU region", "pointing game "
                                                        "hit rate", "pointing game on the map's own grid",
                                                        "seeds", "clips per seed", "flat maps"])))
        parts.append(f"<p class=note>Method: {_e(loc.get('method'))}. Each held-out clip's heat map from the LOSO "
                     "fold model that held its subject out, scored against the clip's true AU region (where the "
                     "demo renderer moved the skin, warped into the aligned crop); mean over clips per seed, then "
                     "mean ± std over seeds. Chance: a map spread evenly, or a maximum at a random pixel, scores the "
                     "region's share of the crop (the 'chance' row). On the map's own grid (MIACNet 4 x 4 at 64 px, "
                     "STSTNet 10 x 10), a hit is the maximum cell overlapping the region, and chance the share of "
                     "such cells, per model.</p>")
    ablation = (loc or {}).get("position_ablation", {})
    if ablation:
        rows = [[label, *(format_mean_std(entry[mode], score) for mode in ("intact", "shuffled", "removed")
                          for score in ("uf1", "uar")),
                 *(format_mean_std(entry[f"{mode}_minus_intact"], "uf1", signed=True) for mode in ("shuffled",
                                                                                                  "removed"))]
                for label, entry in ablation.items()]
        parts.append("<h3>MIACNet's position branch ablated</h3>" + _table(pd.DataFrame(rows, columns=[
            "arm", "UF1 intact", "UAR intact", "UF1 shuffled", "UAR shuffled", "UF1 removed", "UAR removed",
            "ΔUF1 shuffled (paired)", "ΔUF1 removed (paired)"])))
        parts.append("<p class=note>The same fold models on the same held-out clips, the position branch seeing "
                     "the onset of a clip of another subject (shuffled) or giving zeros (removed); the action "
                     "branch sees the clip's own motion. Mean ± std over seeds; Δ paired by seed.</p>")
    if inputs.heatmap_examples is not None:
        parts.append(image_tag(inputs.heatmap_examples, "Heat maps of held-out clips"))
    return "".join(parts)


def _pretraining(inputs: ReportInputs) -> str:
    parts = []
    if inputs.pretrain_metrics:
        ratio = inputs.pretrain_metrics.get("heldout_recon_over_copy")
        parts.append("<p>Held-out reconstruction loss / copy-baseline loss: <b>"
                     + (f"{ratio:.3f}" if isinstance(ratio, int | float) else "–")
                     + "</b> (below 1 means MA2MI predicts the future frame better than copying the source does).</p>")
        parts.append(_table(pd.DataFrame([inputs.pretrain_metrics]), digits=4))
    if inputs.pretrain_examples is not None:
        parts.append(image_tag(inputs.pretrain_examples, "MA2MI's future-frame predictions on held-out videos"))
    if inputs.pretrain_note:
        parts.append(f"<p class=note>{_e(inputs.pretrain_note)}</p>")
    return "".join(parts) or "<p class=note>No pre-training output.</p>"


def _count(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else "?"


def _flow_note(card: Mapping) -> str:
    """The card's optical flow setting, saying so when ingestion computed a flow the model does not read."""
    flow = str(card["preprocessing"].get("optical_flow", ""))
    if flow in ("", "none") or "flow" in card["input"]["names"]:
        return flow
    return f"{flow} (computed by ingestion; not an input of this model)"


def _cards(cards: list[Mapping]) -> str:
    if not cards:
        return "<p class=note>No final model was trained.</p>"
    parts = []
    for card in cards:
        loso = card.get("loso", {})
        items = {
            "model": f"{card['model']['name']} ({_count(card['model'].get('parameters'))} parameters)",
            "classes": ", ".join(card["classes"]),
            "inputs": f"{', '.join(card['input']['names'])} at {card['input']['model_size_px']} px "
                      f"(aligned crops of {card['input']['crop_size_px']} px)",
            "alignment": card["preprocessing"].get("alignment", ""),
            "optical flow": _flow_note(card),
            "trained on": f"{card['trained_on']['samples']} clips of {len(card['trained_on']['subjects'])} subjects "
                          f"({card['trained_on']['dataset']}), seed {card['seed']}, {card['recipe']['epochs']} epochs",
            "LOSO": ", ".join(f"{SCORE_NAMES[s]} {format_mean_std(loso, s)}" for s in SCORES if s in loso),
            "weights": card["weights"],
        }
        rows = "".join(f"<tr><th>{_e(k)}</th><td style='text-align:left'>{_e(v)}</td></tr>" for k, v in items.items())
        parts.append(f"<div class=card><h3>{_e(card['label'])}: {_e(card.get('description', ''))}</h3>"
                     f"<table>{rows}</table></div>")
    return ("<p>Trained on every subject with the LOSO recipe; apply with <code>ma2mi predict PATH --onset N --apex N "
            "--arm ARM</code>.</p><div class=cards>" + "".join(parts) + "</div>")


def build_report(inputs: ReportInputs) -> str:
    """The report's HTML (a complete document, UTF-8, no external resource).

    Args:
        inputs: see :class:`ReportInputs`.

    Returns:
        The HTML text.
    """
    run = inputs.metrics.get("run", {})
    known = {"ablation.png", "confusion.png", "curves.png"}
    others = "".join(_figure(inputs.figures, name, name) for name in sorted(inputs.figures) if name not in known)
    sections = [
        ("ablation", "Ablation: pooled LOSO scores", _ablation(inputs)),
        ("confusion", "Confusion matrices", _confusions(inputs)),
        ("subjects", "Per subject", _groups(inputs.per_subject, "subject")),
        ("datasets", "Per dataset", _groups(inputs.per_dataset, "source_dataset")),
        ("curves", "Training curves", _figure(inputs.figures, "curves.png", "Fine-tuning: training loss per epoch, "
                                              "mean over LOSO folds and seeds") + others),
        ("heatmaps", "Where the models look: heat maps and localisation", _localisation(inputs)),
        ("pretraining", "MA2MI pre-training: future frames of held-out macro videos", _pretraining(inputs)),
        ("models", "Final models", _cards(inputs.cards)),
    ]
    nav = "".join(f'<a href="#{key}">{_e(title.split(":")[0])}</a>' for key, title, _ in sections)
    body = "".join(f'<section id="{key}"><h2>{_e(title)}</h2>{content}</section>' for key, title, content in sections)
    meta = (f"Protocol {run.get('protocol', '?')} · classes {', '.join(inputs.classes)} · seeds {run.get('seeds', '?')}"
            f" · git {str(run.get('git_revision', '?'))[:12]} · params hash {run.get('params_hash', '?')}")
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width, initial-scale=1'>"
            f"<title>MA2MI run report</title><style>{STYLE}</style></head><body>"
            f"<h1>MA2MI → MIACNet: micro-expression recognition run</h1><p class=meta>{_e(meta)}</p>"
            f"<nav>{nav}</nav>{body}</body></html>\n")
