"""One rank of data-parallel MA2MI pre-training (``pretrain.nproc`` > 1).

The ``pretrain`` stage launches ``torchrun --standalone --nproc-per-node=<nproc> -m pipeline.train.pretrain_ddp
--params P --out DIR`` (:func:`pipeline.train.distributed.run_torchrun`); every rank runs :func:`main`, which joins the
process group and calls :func:`pipeline.train.pretrain.train_and_save`. This module does not import Prefect: the
ranks need none of it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from torch.distributed.elastic.multiprocessing.errors import record

from pipeline.config import load_params
from pipeline.train.distributed import process_group
from pipeline.train.pretrain import train_and_save

__all__ = ["main"]


@record  # torchrun's failure summary then carries the exception
def main(argv: list[str] | None = None) -> None:
    """One rank: join the process group, pre-train, write the outputs on rank 0.

    Args:
        argv: ``--params P --out DIR`` (default: the command line).

    Raises:
        RuntimeError: the process group's size is not ``pretrain.nproc`` (a state saved for one number of
            ranks must not be resumed by another), or as :func:`pipeline.train.distributed.process_group`.
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
