"""Streaming pre-training loader: peak RSS against corpus size, and samples/s against the in-RAM path (issue 10).

    python -m benchmarks.pretrain_loader [--params params.yaml] [--copies 1 27] [--pairs 1536] [--cache-mb 256]

Builds corpora from the demo's ingested shards (``paths.macro_dir``; run ``dvc repro pretrain`` first) repeated
``--copies`` times (each copy's videos renamed, so that they are distinct videos), and for each, in a fresh child
process:

- ``streaming``: :class:`pipeline.data.macro.MacroFrames` (shard cache of ``--cache-mb``) and one pre-training
  epoch of ``--pairs`` pairs through :func:`pipeline.train.pretrain.pretrain` (the stage's own code path);
- ``in-RAM``: the path this project used before (every frame decoded into one uint8 tensor, pairs gathered by
  index), for the smallest corpus only (it holds 37.6 KB per 112 px frame).

Printed per run: frames, peak RSS of the child (MB, its ``ru_maxrss``), and training pairs per second of the epoch
(wall time of the epoch, held-out evaluation excluded), on this machine's CPU.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
from pathlib import Path
from pipeline.config import load_params
from pipeline.train.engine import seed_everything
from pipeline.data.macro import MacroFrames, macro_shards
from pipeline.train.pretrain import pretrain
mode, macro_dir, params_path = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
pairs, cache_mb = int(sys.argv[4]), float(sys.argv[5])
params = load_params(params_path)
settings = params.pretrain.model_copy(update={"epochs": 1, "pairs_per_epoch": pairs, "heldout_pairs": 32})
frames = MacroFrames(macro_shards(macro_dir, params.macro.sources), params.model.image_size_px, cache_mb)
if mode == "in-RAM":  # every frame decoded once into one tensor, as load_macro_frames did
    images = torch.stack([frames.image(i) for i in range(len(frames))])
    frames.image = lambda i: images[i]
seed_everything(0)
epoch_s = []
import pipeline.train.engine as engine
train = engine.train_one_epoch
def timed(*args, **kwargs):
    start = time.perf_counter(); out = train(*args, **kwargs); epoch_s.append(time.perf_counter() - start); return out
engine.train_one_epoch = timed
pretrain(frames, params.model, settings, torch.device("cpu"), progress=False)
print(json.dumps({"frames": len(frames), "pairs_per_s": pairs / epoch_s[0],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def build_corpus(source: Path, copies: int, out: Path) -> Path:
    """``copies`` copies of every shard under ``source``, each copy's video ids suffixed ``#<k>``."""
    for k in range(copies):
        for shard in sorted(source.glob("*/frames-*.parquet")):
            table = pq.read_table(shard).to_pandas()
            table["video"] = table["video"] + f"#{k}"
            target = out / shard.parent.name / f"{shard.stem}-copy{k:03d}.parquet"
            target.parent.mkdir(parents=True, exist_ok=True)
            table.to_parquet(target, index=False)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--copies", type=int, nargs="+", default=[1, 27])
    parser.add_argument("--pairs", type=int, default=1536)
    parser.add_argument("--cache-mb", type=float, default=256.0)
    args = parser.parse_args(argv)
    import yaml

    raw = yaml.safe_load(Path(args.params).read_text())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for copies in args.copies:
            corpus = build_corpus(Path(raw["paths"]["macro_dir"]), copies, Path(tmp) / f"corpus{copies}")
            heldout = [f"{video}#0" for video in raw["pretrain"]["heldout_videos"]]
            raw_copy = {**raw, "paths": {**raw["paths"], "macro_dir": str(corpus)},
                        "pretrain": {**raw["pretrain"], "heldout_videos": heldout}}
            params_path = Path(tmp) / f"params{copies}.yaml"
            params_path.write_text(yaml.safe_dump(raw_copy))
            for mode in ("streaming", "in-RAM") if copies == min(args.copies) else ("streaming",):
                start = time.perf_counter()
                out = subprocess.run([sys.executable, "-c", CHILD, mode, str(corpus), str(params_path), str(args.pairs),
                                      str(args.cache_mb)], capture_output=True, text=True, check=True)
                result = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append({"loader": mode, "copies": copies, **{k: round(v, 1) for k, v in result.items()},
                             "wall_s": round(time.perf_counter() - start, 1)})
                print(rows[-1], flush=True)
    print(f"pairs per epoch {args.pairs}, shard cache {args.cache_mb} MB, this process: "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
