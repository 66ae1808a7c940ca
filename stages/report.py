"""DVC stage ``report``: one self-contained HTML page of the run, and the results table as Markdown.

The logic is :mod:`pipeline.report.html` (the HTML), :mod:`pipeline.evaluate.summary` (the Markdown) and
:mod:`pipeline.report.pretrain_examples` (MA2MI's predictions on ``report.pretrain_examples`` held-out macro pairs).
Reads evaluate's outputs, the attention stage's, the pretrain stage's and the final models' cards (``final.dir``).
Writes ``report.path`` (``results/report.html``: images as base64 data URIs, no external resource) and
``report.summary`` (``results/summary.md``, what ``make demo`` prints; also a Prefect markdown artifact).
Run: ``python -m stages.report``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
from prefect.artifacts import create_markdown_artifact

from pipeline.cards import read_cards
from pipeline.config import Params, load_params
from pipeline.data.macro import macro_shards
from pipeline.data.micro_table import read_classes
from pipeline.evaluate.summary import summary_markdown
from pipeline.io import atomic_path
from pipeline.orchestration.stage import flow, get_run_logger, run_stage
from pipeline.report.html import ReportInputs, build_report
from pipeline.report.pretrain_examples import heldout_pairs, load_ma2mi, pairs_figure, predict_futures


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def _pretrain_examples(params: Params) -> tuple[bytes | None, str]:
    if params.report.pretrain_examples == 0:
        return None, "report.pretrain_examples is 0."
    size = params.model.image_size_px
    try:
        sources, futures, pairs = heldout_pairs(macro_shards(params.paths.macro_dir, params.macro.sources),
                                                params.pretrain,
                                                params.report.pretrain_examples, size)
    except (FileNotFoundError, ValueError) as err:
        return None, f"No held-out pairs: {err}"
    model = load_ma2mi(params.paths.pretrain_dir / "encoder.pt", params.model)
    predicted = None if model is None else predict_futures(model, sources, futures)
    note = "" if model is not None else ("encoder.pt holds no decoder (written before the pretrain stage saved it): "
                                         "rerun `dvc repro pretrain` for MA2MI's predictions.")
    return _png(pairs_figure(sources, futures, predicted, pairs)), note


def _inputs(params: Params) -> ReportInputs:
    evaluate = params.paths.evaluate_dir
    metrics = _json(evaluate / "metrics.json")
    if metrics is None:
        raise FileNotFoundError(f"{evaluate / 'metrics.json'}: missing; run `dvc repro evaluate`")
    examples, note = _pretrain_examples(params)
    heatmaps = params.attention.dir / "examples.png"
    return ReportInputs(
        metrics=metrics,
        per_seed=pd.read_csv(evaluate / "per_seed.csv"),
        per_subject=pd.read_csv(evaluate / "per_subject.csv"),
        per_dataset=pd.read_csv(evaluate / "per_dataset.csv"),
        confusions={p.stem: pd.read_csv(p) for p in sorted((evaluate / "confusion").glob("*.csv"))},
        classes=read_classes(params.paths.micro_dir),
        figures={p.name: p.read_bytes() for p in sorted(evaluate.glob("*.png"))},
        localisation=_json(params.attention.dir / "metrics.json"),
        heatmap_examples=heatmaps.read_bytes() if heatmaps.is_file() else None,
        pretrain_metrics=_json(params.paths.pretrain_dir / "metrics.json"),
        pretrain_examples=examples,
        pretrain_note=note,
        cards=read_cards(params.final.dir),
    )


@flow(name="report")
def report_flow(params_path: str = "params.yaml") -> dict:
    """Write the self-contained HTML report and the Markdown summary of the run."""
    params = load_params(params_path)
    inputs = _inputs(params)
    page = build_report(inputs)
    summary = summary_markdown(inputs.metrics, inputs.localisation)
    for path, text in ((params.report.path, page), (params.report.summary, summary)):
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    create_markdown_artifact(key="mer-run-summary", markdown=summary,
                             description=f"The run's results; the whole report: {params.report.path}")
    get_run_logger().info("wrote %s (%.0f kB) and %s\n%s", params.report.path, len(page.encode()) / 1024,
                          params.report.summary, summary)
    return {"report": str(params.report.path), "bytes": len(page.encode())}


def main() -> None:
    run_stage(report_flow)


if __name__ == "__main__":
    main()
