"""DVC stage ``attention``: where the LOSO fold models look on their held-out clips, and localisation scores.

The logic is :mod:`pipeline.evaluate.attention`, :mod:`pipeline.models.heatmap` and
:mod:`pipeline.evaluate.localisation`. For every
active arm, fold and seed, the fold model's heat maps (``attention.method``) on its held-out clips; with the demo's
ground-truth AU masks under ``micro.root``, each is scored: the share of the heat map's mass inside the clip's
true AU region and the pointing game (its maximum inside), per arm mean ± std over seeds, the paired
MA2MI − scratch difference, and the chance level (the region's share of the crop). A real dataset has no ground
truth: ``metrics.json`` then says so instead of giving numbers. Outputs under ``attention.dir``: ``metrics.json``
(a DVC metric; also ``position_ablation``: each MIACNet arm's held-out scores with its position branch shuffled
between subjects or removed, :mod:`pipeline.evaluate.decoupling`), ``per_clip.csv`` (every clip, arm and seed),
``position_ablation.csv`` (arm, seed, mode, scores) and ``examples.png`` (``attention.examples_per_class`` held-out
clips per class with each arm's map, first seed; the report shows it).
Run: ``python -m stages.attention``.
"""

from __future__ import annotations

import pandas as pd

from pipeline.config import AU_MASK_DIR, load_params
from pipeline.data.micro_table import read_classes, read_samples
from pipeline.evaluate.attention import (
    attention_metrics,
    example_rows,
    examples_figure,
    fold_maps,
    has_ground_truth,
    read_regions,
    score_clips,
)
from pipeline.evaluate.decoupling import position_ablation, position_ablation_summary
from pipeline.io import atomic_dir, write_json
from pipeline.orchestration.stage import flow, get_run_logger, run_stage
from pipeline.train.distributed import resolve_device


@flow(name="attention")
def attention_flow(params_path: str = "params.yaml") -> dict:
    """Heat maps of every fold model on its held-out clips; localisation scores where there is ground truth."""
    params = load_params(params_path)
    logger = get_run_logger()
    samples, classes = read_samples(params.paths.micro_dir), read_classes(params.paths.micro_dir)
    size, root = params.micro.image_size_px, params.micro.root
    truth = has_ground_truth(root)
    regions = read_regions(samples, root, size) if truth else None
    if not truth:
        logger.info("%s has no %s/: a real dataset, no localisation score (heat maps only)", root, AU_MASK_DIR)
    examples = example_rows(samples, classes, params.attention.examples_per_class)
    first_seed = params.finetune.recipe.seeds[0]
    tables, drawn, methods = [], {}, set()
    device = resolve_device(params.finetune.recipe.device)
    for maps in fold_maps(params, samples, len(classes), params.attention.method, device):
        tables.append(score_clips(maps, samples, regions))
        methods.add(maps.method)
        if maps.seed == first_seed:
            for row, heat, probs in zip(maps.rows, maps.heatmaps, maps.probabilities, strict=True):
                if row in examples:
                    drawn.setdefault(maps.label, {})[int(row)] = (heat, probs)
    per_clip = pd.concat(tables, ignore_index=True)
    metrics = attention_metrics(per_clip, params.attention.method, root)
    ablation = position_ablation(params, samples, len(classes), device)
    if not ablation.empty:
        metrics["position_ablation"] = position_ablation_summary(ablation)
        for label, entry in metrics["position_ablation"].items():
            logger.info("%s: held-out UF1 intact %.3f, position branch shuffled %.3f, removed %.3f", label,
                        entry["intact"]["uf1"], entry["shuffled"]["uf1"], entry["removed"]["uf1"])
    for label, summary in metrics.items():
        if isinstance(summary, dict) and "mass_in_region" in summary:
            logger.info("%s: mass in AU region %.3f, pointing game %.3f", label, summary["mass_in_region"],
                        summary["pointing_hit_rate"])
    with atomic_dir(params.attention.dir) as out:
        per_clip.to_csv(out / "per_clip.csv", index=False)
        ablation.to_csv(out / "position_ablation.csv", index=False)
        figure = examples_figure(samples, classes, examples, drawn, regions, size, "/".join(sorted(methods)))
        figure.savefig(out / "examples.png", dpi=110)
        write_json(metrics, out / "metrics.json")
    return metrics


def main() -> None:
    run_stage(attention_flow)


if __name__ == "__main__":
    main()
