"""The work of the ``pretrain`` stage, in one process or in every rank of ``torchrun`` (``pretrain.nproc`` > 1).

:func:`train_and_save` pre-trains MA2MI and, on rank 0 only, writes ``encoder.pt``, ``metrics.json`` and
``dvclive/`` into a folder; the per-epoch training state is also rank 0's to write. With ``nproc`` = 1 the
Prefect flow (:mod:`stages.pretrain`) calls it in-process; with more, the flow launches
``torchrun --standalone --nproc-per-node=<nproc> -m stages.pretrain_worker --params P --out DIR`` and every
rank runs :func:`main`. This module does not import Prefect: the ranks need none of it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import torch
from dvclive import Live
from torch.distributed.elastic.multiprocessing.errors import record

from pipeline.config import Params, load_params
from pipeline.distributed import process_group, rank_info, rank_seed
from pipeline.engine import save_checkpoint, seed_everything, training_fingerprint
from pipeline.io import write_json
from pipeline.pretrain import load_macro_frames, pretrain

__all__ = ["main", "train_and_save", "training_state_path"]


def training_state_path(params: Params) -> Path:
    """Where the resumable training state lives while the stage runs (removed by the flow on success)."""
    return params.paths.checkpoint_dir / "pretrain.pt"


def train_and_save(params: Params, out: Path, device: torch.device,
                   logger: logging.Logger | logging.LoggerAdapter) -> dict[str, float]:
    """Pre-train MA2MI on ``params.paths.macro_dir``; rank 0 writes the outputs into ``out``.

    Outputs (rank 0; the same files whatever the number of ranks): ``encoder.pt`` (``encoder``: the branch
    weights, ``model_params``, ``metrics``), ``metrics.json`` (the metrics rounded to 6 decimals) and
    ``dvclive/`` (one step per epoch).

    Returns:
        The last epoch's metrics (see :func:`pipeline.pretrain.pretrain`), the same on every rank.

    Raises:
        FileNotFoundError, ValueError: as :func:`pipeline.pretrain.load_macro_frames` and ``pretrain``.
    """
    world = rank_info()
    seed_everything(rank_seed(params.pretrain.seed, world.rank))
    index, images = load_macro_frames(params.paths.macro_dir, params.model.image_size_px)
    logger.info("%d frames from %d videos on %s (rank %d of %d)", len(index), index["video"].nunique(), device,
                world.rank, world.world_size)
    fingerprint = training_fingerprint({"model": params.model.model_dump(mode="json"),
                                        "pretrain": params.pretrain.model_dump(mode="json")},
                                       sorted(params.paths.macro_dir.glob("*/frames-*.parquet")))
    run = dict(state_path=training_state_path(params), fingerprint=fingerprint)
    if not world.is_main:
        return pretrain(index, images, params.model, params.pretrain, device, None, **run)[1]
    with Live(dir=str(out / "dvclive"), save_dvc_exp=False, dvcyaml=None) as live:
        def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
            for key, value in metrics.items():
                live.log_metric(key, value)
            live.next_step()

        model, metrics = pretrain(index, images, params.model, params.pretrain, device, log_epoch, **run)
    save_checkpoint(out / "encoder.pt", encoder=model.encoder_state_dict(),
                    model_params=params.model.model_dump(mode="json"), metrics=metrics)
    write_json({k: round(v, 6) for k, v in metrics.items()}, out / "metrics.json")
    return metrics


@record  # torchrun's failure summary then carries the exception
def main(argv: list[str] | None = None) -> None:
    """One rank: join the process group, pre-train, write the outputs on rank 0.

    Raises:
        RuntimeError: the process group's size is not ``pretrain.nproc`` (a state saved for one number of
            ranks must not be resumed by another), or as :func:`pipeline.distributed.process_group`.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, required=True, help="folder for encoder.pt, metrics.json, dvclive/")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(stream=sys.stderr, format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s",
                        level=logging.INFO if rank == 0 else logging.WARNING)  # one copy of each epoch's line
    params = load_params(args.params)
    with process_group(params.pretrain.device) as (world, device):
        if world.world_size != params.pretrain.nproc:
            raise RuntimeError(f"{world.world_size} processes, but pretrain.nproc = {params.pretrain.nproc}")
        train_and_save(params, args.out, device, logging.getLogger(__name__))


if __name__ == "__main__":
    main()
