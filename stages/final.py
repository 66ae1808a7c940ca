"""DVC stage ``final_<arm>``: the arm's model trained on every subject, and its model card (DESIGN §10).

The logic is :mod:`pipeline.train.final`: the LOSO recipe (``finetune.recipe``, fixed epochs) on ALL samples, from the
first seed of ``finetune.recipe.seeds``. Outputs under ``final.dir``: ``<arm>.pt`` (``model`` state dict,
``model_name``, ``arm``, ``seed``, ``classes``) and ``<arm>.json``, the model card that ``ma2mi predict`` reads
(classes, input size, preprocessing, model, recipe, seed, the arm's LOSO metrics from evaluate's
``metrics.json``, git revision and params hash of that run). The full training state is saved every 30 s and at the end
in ``final.cache_dir/<arm>.pt`` (outside DVC), and kept after success: a killed run resumes where it stopped, and a
rerun that only new LOSO metrics caused (the card's input; e.g. another arm joined evaluate) restores the same
weights instead of training again. The state is keyed by a fingerprint of everything that shapes the training (the
samples' and the encoder's bytes, the model, recipe and seed), never by the metrics.
Run: ``python -m stages.final --arm ma2mi``.
"""

from __future__ import annotations

import argparse
import json

import torch

from pipeline.arms import ARMS
from pipeline.config import load_params
from pipeline.data.micro_table import SAMPLES_FILE, read_classes, read_samples
from pipeline.models.registry import arm_model
from pipeline.orchestration.stage import flow, get_run_logger, run_stage
from pipeline.train.distributed import resolve_device
from pipeline.train.engine import set_deterministic, training_fingerprint
from pipeline.train.final import check_final_arm, final_seed, model_card, save_final, train_final


@flow(name="final-model")
def final_flow(arm: str, params_path: str = "params.yaml") -> dict:
    """Train ``arm`` on every subject once, with the LOSO recipe; write the weights and the model card."""
    params = load_params(params_path)
    check_final_arm(params, arm)
    recipe = params.finetune.arm_recipe(arm)
    set_deterministic(recipe.deterministic)
    device = resolve_device(recipe.device)
    micro_dir, metrics_path = params.paths.micro_dir, params.paths.evaluate_dir / "metrics.json"
    samples, classes = read_samples(micro_dir), read_classes(micro_dir)
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path}: missing; run `dvc repro evaluate` (the card quotes its metrics)")
    loso = json.loads(metrics_path.read_text())
    encoder, inputs = None, [micro_dir / SAMPLES_FILE]
    if ARMS[arm].pretrained:
        inputs.append(params.paths.pretrain_dir / "encoder.pt")
        encoder = torch.load(inputs[-1], map_location="cpu", weights_only=True)["encoder"]
    spec = arm_model(arm, finetune=params.finetune, model=params.model)
    get_run_logger().info("final %s model (%s, %d px): %d samples of %d subjects, seed %d, %d epochs, %s", arm,
                          spec.name, spec.image_size_px, len(samples), samples["subject"].nunique(),
                          final_seed(params), recipe.epochs, device)
    fingerprint = training_fingerprint({"model": spec.params.model_dump(mode="json"), "model_name": spec.name,
                                        "arm": arm, "final": True, "seed": final_seed(params),
                                        "recipe": recipe.model_dump(mode="json", exclude={"seeds"})}, inputs)
    state_path = params.final.cache_dir / f"{arm}.pt"  # kept: see the module docstring
    history: list[dict[str, float]] = []
    model = train_final(samples, n_classes=len(classes), model=spec, recipe=recipe, seed=final_seed(params),
                        device=device, encoder_state=encoder,
                        on_epoch=lambda epoch, metrics: history.append({"epoch": epoch + 1, **metrics}),
                        state_path=state_path, fingerprint=fingerprint)
    out = params.final.dir
    card = model_card(arm=arm, spec=spec, params=params, classes=classes, samples=samples, model=model,
                      weights_file=f"{arm}.pt", loso=loso, history=history)
    weights, card_file = save_final(out, model, card)
    get_run_logger().info("wrote %s and its card %s; LOSO %s", weights, card_file,
                          {k: card["loso"].get(k) for k in ("accuracy", "uf1", "uar")})
    return {"arm": arm, "samples": len(samples), "seed": final_seed(params)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arm", required=True, choices=list(ARMS))
    args = parser.parse_args(argv)
    run_stage(final_flow, arm=args.arm)


if __name__ == "__main__":
    main()
