"""DVC stage ``pretrain``: MA2MI future-frame reconstruction on the ingested macro frames (DESIGN §4).

Outputs under ``paths.pretrain_dir``: ``encoder.pt`` (the position and action branches, with the model
params they were built with), ``metrics.json`` (held-out ``recon_loss``, ``copy_loss`` and their ratio) and
``dvclive/`` (per-epoch curves). While it runs, the full training state is saved after every epoch under
``paths.checkpoint_dir``: a killed run resumes where it stopped, with the same result. Run:
``python -m stages.pretrain``.
"""

from __future__ import annotations

from pipeline.orchestration import flow, get_run_logger, run_stage  # first: sets Prefect defaults

from dvclive import Live

from pipeline.config import load_params
from pipeline.engine import resolve_device, save_checkpoint, seed_everything, training_fingerprint
from pipeline.io import atomic_dir, write_json
from pipeline.pretrain import load_macro_frames, pretrain


@flow(name="pretrain")
def pretrain_flow(params_path: str = "params.yaml") -> dict:
    """Pre-train MA2MI and save its encoder."""
    params = load_params(params_path)
    logger = get_run_logger()
    seed_everything(params.pretrain.seed)
    device = resolve_device(params.pretrain.device)
    index, images = load_macro_frames(params.paths.macro_dir, params.model.image_size_px)
    logger.info("%d frames from %d videos on %s", len(index), index["video"].nunique(), device)
    fingerprint = training_fingerprint({"model": params.model.model_dump(mode="json"),
                                        "pretrain": params.pretrain.model_dump(mode="json")},
                                       sorted(params.paths.macro_dir.glob("*/frames-*.parquet")))
    state_path = params.paths.checkpoint_dir / "pretrain.pt"
    with atomic_dir(params.paths.pretrain_dir) as out:
        with Live(dir=str(out / "dvclive"), save_dvc_exp=False, dvcyaml=None) as live:
            def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
                for key, value in metrics.items():
                    live.log_metric(key, value)
                live.next_step()

            model, metrics = pretrain(index, images, params.model, params.pretrain, device, log_epoch,
                                      state_path=state_path, fingerprint=fingerprint)
        save_checkpoint(out / "encoder.pt", encoder=model.encoder_state_dict(),
                        model_params=params.model.model_dump(mode="json"), metrics=metrics)
        write_json({k: round(v, 6) for k, v in metrics.items()}, out / "metrics.json")
    state_path.unlink(missing_ok=True)  # the outputs are in place: nothing left to resume
    ratio = metrics["heldout_recon_over_copy"]
    logger.info("held-out recon_loss / copy_loss = %.3f (%s the copy baseline)", ratio,
                "beats" if ratio < 1 else "does NOT beat")
    return metrics


def main() -> None:
    run_stage(pretrain_flow)


if __name__ == "__main__":
    main()
