"""A session fixture for the tests of final models, ``ma2mi predict`` and heat maps: a rendered demo with models.

``demo`` renders a shrunk demo (3 subjects, 64 px faces, with the renderer's ground-truth AU masks), ingests it
with the real adapter, trains the final MIACNet (scratch arm) and an STSTNet baseline (which reads the optical
flow) for one epoch on every subject, and writes their weights and cards, as the ``final_<arm>`` stages do.
Import it into a test module: ``from tests.demo_models import demo_fixture  # noqa: F401``.
"""

from __future__ import annotations

import pytest
import torch
import yaml

from pipeline.config import Params
from pipeline.ingest.micro import ingest_micro
from pipeline.models.registry import arm_model
from pipeline.synth import render_demo
from pipeline.train.final import final_seed, model_card, save_final, train_final
from tests.conftest import REPO, shrink

LOSO = {"scratch": {"accuracy": 0.5, "accuracy_std": 0.1, "uf1": 0.4, "uf1_std": 0.1, "uar": 0.5, "uar_std": 0.1,
                    "n": 9, "seeds": 2},
        "ststnet": {"accuracy": 0.3, "accuracy_std": 0.0, "uf1": 0.3, "uf1_std": 0.0, "uar": 0.3, "uar_std": 0.0,
                    "n": 9, "seeds": 2},
        "run": {"seeds": [0, 1], "git_revision": "abc123", "params_hash": "0123456789abcdef", "protocol": "p"}}


@pytest.fixture(scope="session", name="demo")
def demo_fixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("final")
    raw = shrink(yaml.safe_load((REPO / "params.yaml").read_text()))
    raw["paths"]["demo_micro_dir"] = raw["micro"]["root"] = str(root / "micro")
    raw["finetune"]["recipe"]["epochs"] = 1
    raw["finetune"]["baseline"].update(model="ststnet", image_size_px=48, folds=raw["finetune"]["folds"])
    raw["final"].update(dir=str(root / "final"), baseline=["ststnet"])
    params = Params.model_validate(raw)
    render_demo(params.synthesize, root / "micro", root / "macro", progress=False)
    ingested = ingest_micro(params.micro, progress=False)
    models = {}
    for arm in ("scratch", "baseline"):
        history = []
        spec = arm_model(arm, finetune=params.finetune, model=params.model)
        model = train_final(ingested.samples, n_classes=len(ingested.classes), model=spec,
                            recipe=params.finetune.recipe, seed=final_seed(params), device=torch.device("cpu"),
                            on_epoch=lambda epoch, m, h=history: h.append({"epoch": epoch + 1, **m}), progress=False)
        card = model_card(arm=arm, spec=spec, params=params, classes=ingested.classes, samples=ingested.samples,
                          model=model, weights_file=f"{arm}.pt", loso=LOSO, history=history)
        save_final(params.final.dir, model, card)
        models[arm] = model
    return {"params": params, "samples": ingested.samples, "classes": ingested.classes, "models": models,
            "final": params.final.dir, "root": root}
