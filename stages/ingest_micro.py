"""DVC stage ``ingest_micro``: a micro-expression dataset → aligned onset/apex samples.

Outputs under ``paths.micro_dir``: ``samples.parquet`` (``sample_id, dataset, source_dataset, subject, clip,
onset_frame, apex_frame, offset_frame, label, label_name, action_units`` + ``onset_image``/``apex_image`` PNG
bytes), ``dropped.parquet`` (every annotation row that is not a sample, with its reason), ``summary.json``
(counts per class, subject and source; the class list; the dropped rows) and ``summary.md`` (the same, for people).
Run: ``python -m stages.ingest_micro``.
"""

from __future__ import annotations

from pipeline.orchestration import flow, get_run_logger, run_stage  # first: sets Prefect defaults

import pandas as pd

from pipeline.config import load_params
from pipeline.ingest_micro import ingest_micro
from pipeline.io import atomic_dir, write_json, write_parquet


def summarise(samples: pd.DataFrame, dropped: pd.DataFrame, classes: list[str], protocol: str) -> dict:
    """Human-readable counts: per class (every class listed), per subject, per source; every dropped row."""
    per_class = samples["label_name"].value_counts()
    return {
        "protocol": protocol,
        "classes": classes,
        "samples": len(samples),
        "subjects": int(samples["subject"].nunique()),
        "per_class": {name: int(per_class.get(name, 0)) for name in classes},
        "per_subject": samples["subject"].value_counts().sort_index().to_dict(),
        "per_source": samples["source_dataset"].value_counts().to_dict(),
        "dropped": len(dropped),
        "dropped_rows": dropped.to_dict("records"),
    }


def summary_markdown(samples: pd.DataFrame, dropped: pd.DataFrame, summary: dict) -> str:
    """The summary as a Markdown report: totals, counts per class, per subject, per source, and every drop."""
    counts = pd.crosstab(samples["subject"], samples["label_name"], margins=True, margins_name="total")
    by_source = samples.groupby("source_dataset").agg(samples=("sample_id", "size"), subjects=("subject", "nunique"))
    reasons = dropped[["source_dataset", "sheet_row", "subject", "clip", "reason"]]
    return "\n\n".join([
        f"# Micro-expression samples ({summary['protocol']})",
        f"{summary['samples']} samples from {summary['subjects']} subjects; {summary['dropped']} annotation rows "
        f"dropped. Classes in label order: {', '.join(summary['classes'])}.",
        "## Per source\n\n" + by_source.to_markdown(),
        "## Per subject and class\n\n" + counts.to_markdown(),
        "## Dropped annotation rows\n\n" + (reasons.to_markdown(index=False) if len(reasons) else "None."),
    ]) + "\n"


@flow(name="ingest-micro")
def ingest_micro_flow(params_path: str = "params.yaml") -> dict:
    """Read ``micro.root`` through its dataset adapter and write the samples table."""
    params = load_params(params_path)
    samples, dropped, classes = ingest_micro(params.micro)
    summary = summarise(samples, dropped, classes, params.micro.protocol)
    with atomic_dir(params.paths.micro_dir) as out:
        write_parquet(samples.drop(columns=["onset_path", "apex_path"]), out / "samples.parquet")
        write_parquet(dropped.astype({"sheet_row": "int64"}), out / "dropped.parquet")
        write_json(summary, out / "summary.json")
        (out / "summary.md").write_text(summary_markdown(samples, dropped, summary))
    get_run_logger().info("%d samples from %d subjects %s; %d annotation rows dropped", summary["samples"],
                          summary["subjects"], summary["per_class"], summary["dropped"])
    return {k: v for k, v in summary.items() if k != "dropped_rows"}


def main() -> None:
    run_stage(ingest_micro_flow)


if __name__ == "__main__":
    main()
