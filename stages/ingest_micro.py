"""DVC stage ``ingest_micro``: a micro-expression dataset → aligned onset/apex samples.

Outputs under ``paths.micro_dir`` (:mod:`pipeline.data.micro_table`): ``samples.parquet`` (``sample_id, dataset,
source_dataset, subject, clip, onset_frame, apex_frame, offset_frame, label, label_name, action_units`` +
``onset_image``/``apex_image`` PNG bytes), ``dropped.parquet`` (every annotation row that is not a sample, with
its reason), ``summary.json`` (counts per class, subject and source; the class list; the dropped rows; the apex
fixes of ``micro.apex_outside = middle``) and ``summary.md`` (the same, for people). Subjects are ``<source>/<id>``
in every file. Run: ``python -m stages.ingest_micro``.
"""

from __future__ import annotations

from pipeline.config import load_params
from pipeline.data.micro_table import DROPPED_FILE, SAMPLES_FILE, SUMMARY_FILE
from pipeline.ingest.micro import ingest_micro, samples_summary_markdown, summarise
from pipeline.io import atomic_dir, write_json, write_parquet
from pipeline.orchestration.stage import flow, get_run_logger, run_stage


@flow(name="ingest-micro")
def ingest_micro_flow(params_path: str = "params.yaml") -> dict:
    """Read ``micro.root`` through its dataset adapter and write the samples table."""
    params = load_params(params_path)
    samples, dropped, classes, fixes = ingest_micro(params.micro)
    summary = summarise(samples, dropped, classes, params.micro.protocol, fixes)
    with atomic_dir(params.paths.micro_dir) as out:
        write_parquet(samples.drop(columns=["onset_path", "apex_path"]), out / SAMPLES_FILE)
        write_parquet(dropped.astype({"sheet_row": "int64"}), out / DROPPED_FILE)
        write_json(summary, out / SUMMARY_FILE)
        (out / "summary.md").write_text(samples_summary_markdown(samples, dropped, summary, fixes))
    get_run_logger().info("%d samples from %d subjects %s; %d annotation rows dropped; %d apexes moved to the "
                          "middle frame", summary["samples"], summary["subjects"], summary["per_class"],
                          summary["dropped"], summary["apex_fixes"])
    return {k: v for k, v in summary.items() if k not in ("dropped_rows", "apex_fix_rows")}


def main() -> None:
    run_stage(ingest_micro_flow)


if __name__ == "__main__":
    main()
