"""DVC stage ``check_micro``: ``micro`` params checked before ``ingest_micro`` needs its paths
(:mod:`pipeline.ingest.checks`).

Writes ``paths.checks_dir/micro.json`` (what was checked), which ``ingest_micro`` depends on. A plain process, not
a Prefect flow: it runs in a fraction of a second, before anything else of the micro side. Run:
``python -m stages.check_micro``.
"""

from __future__ import annotations

import sys

from pipeline.config import ConfigError, load_params
from pipeline.ingest.checks import check_micro
from pipeline.io import write_json


def main() -> None:
    try:
        params = load_params("params.yaml")
        write_json(check_micro(params), params.paths.checks_dir / "micro.json")
    except ConfigError as err:
        print(f"stage failed: {err}", file=sys.stderr)
        raise SystemExit(1) from err


if __name__ == "__main__":
    main()
