"""The HTML report opens offline (no external resource) and every embedded image decodes; the Markdown summary."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.evaluate.metrics import SCORES
from pipeline.evaluate.summary import summary_markdown
from pipeline.report.html import ReportInputs, build_report

_DATA_IMAGE = re.compile(r"data:image/(png|jpeg|gif|webp);base64,([A-Za-z0-9+/=]+)")


def assert_self_contained(page: str) -> int:
    """Fail on anything a browser would fetch; decode every embedded image. Returns the number of images."""
    assert "<script" not in page.lower()
    for attribute in re.findall(r"""\b(?:src|href|srcset|poster|data)\s*=\s*["']?([^"'\s>]+)""", page, re.I):
        assert not re.match(r"(?i)(https?:|//|ftp:|file:)", attribute), f"external resource: {attribute[:80]}"
        assert attribute.startswith(("data:image/", "#")), f"a resource that is not embedded: {attribute[:80]}"
    assert not re.search(r"(?i)<link\b", page), "a <link> (stylesheet, font, icon) loads a file"
    assert not re.search(r"(?i)@import", page)
    for url in re.findall(r"(?i)url\(\s*['\"]?([^'\")]+)", page):
        assert url.startswith("data:"), f"CSS url() to a file: {url[:80]}"
    images = _DATA_IMAGE.findall(page)
    for _, payload in images:
        with Image.open(io.BytesIO(base64.b64decode(payload, validate=True))) as image:
            image.verify()  # raises on a corrupt file
    assert len(images) == page.count("<img"), "an <img> whose source is not a decodable data URI"
    return len(images)


def _png(side: int = 12) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _inputs() -> ReportInputs:
    per_seed = pd.DataFrame([{"arm": arm, "seed": s, "accuracy": a, "uf1": a - 0.05, "uar": a, "n": 9}
                             for arm, values in (("ma2mi", (0.7, 0.6)), ("scratch", (0.5, 0.4)))
                             for s, a in enumerate(values)])
    metrics = {"run": {"seeds": [0, 1], "git_revision": "0123abcd", "params_hash": "ffee", "protocol": "megc"}}
    for arm, part in per_seed.groupby("arm"):
        metrics[arm] = {**{s: float(part[s].mean()) for s in ("accuracy", "uf1", "uar")},
                        **{f"{s}_std": float(part[s].std()) for s in ("accuracy", "uf1", "uar")}, "n": 9, "seeds": 2}
    metrics["ma2mi_minus_scratch"] = {"accuracy": 0.2, "accuracy_std": 0.0, "uf1": 0.2, "uf1_std": 0.0,
                                      "uar": 0.2, "uar_std": 0.0, "seeds": 2}
    per_subject = pd.DataFrame([{"subject": f"casme2/sub0{k}", "accuracy": 0.5, "uf1": 0.4, "uar": 0.5, "n": 6,
                                 "arm": arm} for k in (1, 2) for arm in ("ma2mi", "scratch")])
    per_dataset = pd.DataFrame([{"source_dataset": "casme2", "accuracy": 0.5, "uf1": 0.4, "uar": 0.5, "n": 18,
                                 "arm": arm} for arm in ("ma2mi", "scratch")])
    confusion = pd.DataFrame({"actual": ["negative", "positive", "surprise"],
                              "predicted": ["negative", "surprise", "surprise"]})
    localisation = {"ground_truth": True, "method": "gradcam",
                    "ma2mi": {"mass_in_region": 0.4, "mass_in_region_std": 0.05, "pointing_hit_rate": 0.5,
                              "pointing_hit_rate_std": 0.1, "seeds": 2, "clips": 9, "flat": 0},
                    "chance": {"mass_in_region": 0.12, "pointing_hit_rate": 0.12, "clips": 9}}
    card = {"format": "ma2mi-model-card", "arm": "ma2mi", "label": "ma2mi", "description": "MIACNet <b>x</b>",
            "weights": "ma2mi.pt", "classes": ["negative", "positive", "surprise"],
            "input": {"names": ["onset", "apex"], "model_size_px": 112, "crop_size_px": 112},
            "preprocessing": {"alignment": "none: centred square", "optical_flow": "tvl1"},
            "model": {"name": "miacnet", "parameters": 454741},
            "trained_on": {"samples": 96, "subjects": ["a", "b"], "dataset": "demo"}, "seed": 0,
            "recipe": {"epochs": 25}, "loso": metrics["ma2mi"]}
    return ReportInputs(metrics=metrics, per_seed=per_seed, per_subject=per_subject, per_dataset=per_dataset,
                        confusions={"ma2mi": confusion, "scratch": confusion},
                        classes=["negative", "positive", "surprise"],
                        figures={"ablation.png": _png(), "confusion.png": _png(), "curves.png": _png(),
                                 "label_efficiency.png": _png()},
                        localisation=localisation, heatmap_examples=_png(20),
                        pretrain_metrics={"heldout_recon_over_copy": 0.85, "heldout_copy_loss": 0.1},
                        pretrain_examples=_png(16), cards=[card])


def test_the_report_is_one_offline_file_with_decodable_images():
    page = build_report(_inputs())
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert assert_self_contained(page) == 6  # 4 evaluate figures, the heat maps, the pre-training examples
    for text in ("0.650 ± 0.071", "seed 0: 0.700, 0.650, 0.700", "MA2MI − scratch (paired by seed)",
                 "seed 1: +0.200", "casme2/sub01", "pointing game", "0.120", "0.850", "454,741",
                 "label_efficiency.png", "ma2mi predict"):
        assert text in page, text
    assert "MIACNet &lt;b&gt;x&lt;/b&gt;" in page  # values are escaped


def test_the_checker_catches_external_resources():
    with pytest.raises(AssertionError, match="external"):
        assert_self_contained('<img src="https://cdn.example.org/x.png">')
    with pytest.raises(AssertionError, match="link"):
        assert_self_contained('<link rel="stylesheet" href="#x">')
    with pytest.raises(AssertionError, match="url"):
        assert_self_contained("<style>body { background: url('http://x/y.png') }</style>")
    broken = base64.b64encode(b"\x89PNG\r\n\x1a\nnot really").decode()
    with pytest.raises(Exception):  # noqa: B017 (PIL raises its own error types)
        assert_self_contained(f'<img src="data:image/png;base64,{broken}">')


def test_sections_say_what_is_missing():
    inputs = _inputs()
    inputs.localisation = {"ground_truth": False, "method": "gradcam", "note": "data/x has no ground_truth_au_masks/"}
    inputs.pretrain_examples, inputs.pretrain_note, inputs.cards = None, "encoder.pt holds no decoder", []
    page = build_report(inputs)
    assert "has no ground_truth_au_masks/" in page and "holds no decoder" in page
    assert "No final model was trained" in page
    assert_self_contained(page)


def test_summary_markdown_lists_arms_difference_and_localisation():
    inputs = _inputs()
    text = summary_markdown(inputs.metrics, inputs.localisation)
    lines = text.splitlines()
    assert lines[0] == "# Results: protocol megc, seeds [0, 1]"
    assert "| ma2mi | 0.650 ± 0.071 | 0.600 ± 0.071 | 0.650 ± 0.071 | 9 | 2 |" in lines
    assert any(line.startswith("| ma2mi − scratch (paired by seed) | +0.200 ± 0.000") for line in lines)
    assert "| chance | 0.120 | 0.120 |  |" in lines
    with_intervals = {**inputs.metrics, "ma2mi_minus_scratch": {**inputs.metrics["ma2mi_minus_scratch"],
                                                                **{f"{s}_ci95": [0.1, 0.3] for s in SCORES}},
                      "label_efficiency": {"ma2mi_minus_scratch": {"1": {"uf1": 0.25, "uf1_std": 0.02,
                                                                          "uf1_ci95": [0.2, 0.3]}}}}
    text = summary_markdown(with_intervals)
    assert "| ma2mi − scratch (paired by seed) | +0.200 ± 0.000 [+0.100, +0.300] |" in text
    assert "With 1 training clip(s) per class and subject, ma2mi − scratch UF1: +0.250 ± 0.020 [+0.200, +0.300]." \
        in text
    no_truth = summary_markdown(inputs.metrics, {"ground_truth": False, "note": "no masks"})
    assert no_truth.rstrip().endswith("Heat-map localisation: no masks")
    json.dumps(text)  # plain text


def test_a_card_says_when_the_model_does_not_read_the_stored_flow():
    from pipeline.report.html import _flow_note

    card = {"preprocessing": {"optical_flow": "tvl1"}, "input": {"names": ["onset", "apex"]}}
    assert _flow_note(card) == "tvl1 (computed by ingestion; not an input of this model)"
    assert _flow_note({**card, "input": {"names": ["flow"]}}) == "tvl1"
    assert _flow_note({**card, "preprocessing": {"optical_flow": "none"}}) == "none"
