"""MA2MI pre-training budget: held-out ``recon_loss / copy_loss`` against epochs x pairs (issue 11).

    python -m benchmarks.pretrain_budget [--epochs 5 10 20 40] [--pairs 1536] [--params params.yaml]

Pre-trains MA2MI from scratch once per budget, on the frames the ``ingest_macro`` stages wrote under
``paths.macro_dir`` (run ``dvc repro pretrain`` first, or at least the ingest stages), with every other setting from
``params.yaml`` (the cosine schedule spans each run's own epochs, as in the pipeline), and prints one row per budget:
epochs, pairs per epoch, the budget (pairs seen), the held-out ratio of the last epoch and the wall time. The
demo's ``pretrain.epochs`` is chosen from this curve (docs/data.md, "The demo, and why its proportions").
"""

from __future__ import annotations

import argparse
import logging
import time

import pandas as pd

from pipeline.config import load_params
from pipeline.data.macro import MacroFrames, macro_shards
from pipeline.train.distributed import resolve_device
from pipeline.train.engine import seed_everything
from pipeline.train.pretrain import pretrain


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--epochs", type=int, nargs="+", default=[5, 10, 20, 40])
    parser.add_argument("--pairs", type=int, default=None, help="pairs per epoch (default: pretrain.pairs_per_epoch)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    params = load_params(args.params)
    device = resolve_device(params.pretrain.device)
    frames = MacroFrames(macro_shards(params.paths.macro_dir, params.macro.sources), params.model.image_size_px,
                         params.pretrain.loader.cache_mb)
    pairs = args.pairs or params.pretrain.pairs_per_epoch
    rows = []
    for epochs in args.epochs:
        settings = params.pretrain.model_copy(update={"epochs": epochs, "pairs_per_epoch": pairs})
        seed_everything(settings.seed)
        start = time.perf_counter()
        _, metrics = pretrain(frames, params.model, settings, device, progress=False)
        rows.append({"epochs": epochs, "pairs_per_epoch": pairs, "pairs_seen": epochs * pairs,
                     "heldout_recon_over_copy": round(metrics["heldout_recon_over_copy"], 4),
                     "train_recon_over_copy": round(metrics["train_recon_loss"] / metrics["train_copy_loss"], 4),
                     "wall_s": round(time.perf_counter() - start, 1)})
        print(rows[-1], flush=True)
    print(f"{len(frames)} frames of {frames.index['video'].nunique()} videos, {params.model.image_size_px} px, "
          f"{device}:")
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
