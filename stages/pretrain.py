"""DVC stage ``pretrain``: MA2MI future-frame reconstruction on the ingested macro frames (DESIGN §4).

Outputs under ``paths.pretrain_dir``: ``encoder.pt`` (the position and action branches, with the model
params they were built with), ``metrics.json`` (held-out ``recon_loss``, ``copy_loss`` and their ratio) and
``dvclive/`` (per-epoch curves). While it runs, the full training state is saved after every epoch under
``paths.checkpoint_dir``: a killed run resumes where it stopped, with the same result. With
``pretrain.nproc`` > 1 the flow (still one process) launches ``torchrun`` with that many DDP processes
(:mod:`pipeline.train.pretrain_ddp`), streams their output into its log, and reports what rank 0 wrote; the
outputs have the same shape. Run: ``python -m stages.pretrain``.
"""

from __future__ import annotations

import torch

from pipeline.config import load_params
from pipeline.io import atomic_dir
from pipeline.orchestration.stage import flow, get_run_logger, run_stage
from pipeline.train import pretrain_ddp
from pipeline.train.distributed import check_devices, resolve_device, run_torchrun
from pipeline.train.pretrain import train_and_save, training_state_path


@flow(name="pretrain")
def pretrain_flow(params_path: str = "params.yaml") -> dict:
    """Pre-train MA2MI (in ``pretrain.nproc`` processes) and save its encoder.

    Raises:
        RuntimeError: CUDA requested but absent, fewer GPUs than ``pretrain.nproc``, or a failed rank (the
            message names it).
    """
    params = load_params(params_path)
    logger = get_run_logger()
    nproc = params.pretrain.nproc
    device = resolve_device(params.pretrain.device)
    with atomic_dir(params.paths.pretrain_dir) as out:
        if nproc == 1:
            metrics = train_and_save(params, out, device, logger)
        else:
            check_devices(nproc, device)
            logger.info("pre-training in %d processes (torchrun, DDP over %s)", nproc,
                        "NCCL" if device.type == "cuda" else "gloo")
            run_torchrun(nproc, pretrain_ddp.__name__, ["--params", str(params_path), "--out", str(out)],
                         logger.info)
            # rank 0's metrics, unrounded
            metrics = torch.load(out / "encoder.pt", map_location="cpu", weights_only=True)["metrics"]
    training_state_path(params).unlink(missing_ok=True)  # the outputs are in place: nothing left to resume
    ratio = metrics["heldout_recon_over_copy"]
    logger.info("held-out recon_loss / copy_loss = %.3f (%s the copy baseline)", ratio,
                "beats" if ratio < 1 else "does NOT beat")
    return metrics


def main() -> None:
    run_stage(pretrain_flow)


if __name__ == "__main__":
    main()
