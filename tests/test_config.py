"""params.yaml is strict: unknown, missing or mistyped keys are errors that name the key."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from pipeline.arms import active_arms, arm_label
from pipeline.config import ConfigError, load_params


def _write(tmp_path, raw):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_real_params_load(repo):
    params = load_params(repo / "params.yaml")
    assert active_arms(params.finetune) == ["ma2mi", "scratch", "baseline"]  # STSTNet: cheap enough for the demo
    assert arm_label(params.finetune, "baseline") == "ststnet"
    assert len(params.finetune.recipe.seeds) >= 5
    assert params.synthesize.micro_peak_px[1] <= 2.0


def test_unknown_key_is_an_error(tmp_path, raw_params):
    raw_params["finetune"]["learning_rate"] = 0.1
    with pytest.raises(ConfigError, match=r"finetune\.learning_rate"):
        load_params(_write(tmp_path, raw_params))


def test_unknown_section_is_an_error(tmp_path, raw_params):
    raw_params["train"] = {"epochs": 3}
    with pytest.raises(ConfigError, match=r"train"):
        load_params(_write(tmp_path, raw_params))


def test_missing_key_is_an_error(tmp_path, raw_params):
    del raw_params["pretrain"]["horizon_s"]
    with pytest.raises(ConfigError, match=r"pretrain\.horizon_s.*[Ff]ield required"):
        load_params(_write(tmp_path, raw_params))


def test_wrong_type_and_range_are_errors(tmp_path, raw_params):
    raw_params["finetune"]["recipe"]["epochs"] = "many"
    raw_params["synthesize"]["micro_peak_px"] = [2.0, 0.5]
    with pytest.raises(ConfigError) as err:
        load_params(_write(tmp_path, raw_params))
    assert "finetune.recipe.epochs" in str(err.value) and "synthesize.micro_peak_px" in str(err.value)


def test_demo_root_must_be_the_synthesized_dataset(tmp_path, raw_params):
    raw_params["micro"]["root"] = "somewhere/else"
    with pytest.raises(ConfigError, match="demo_micro_dir"):
        load_params(_write(tmp_path, raw_params))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.yaml"):
        load_params(tmp_path / "nope.yaml")


def test_params_are_frozen(repo):
    params = load_params(repo / "params.yaml")
    with pytest.raises(ValidationError, match="frozen"):
        params.finetune.recipe.epochs = 3


def test_baseline_arm_runs_on_the_same_folds(tmp_path, raw_params):
    raw_params["finetune"]["baseline"]["folds"] = [0, 1]
    with pytest.raises(ConfigError, match=r"baseline.folds \[0, 1\] must be \[\] \(arm off\) or the same folds"):
        load_params(_write(tmp_path, raw_params))
    raw_params["finetune"]["baseline"]["folds"] = list(reversed(raw_params["finetune"]["folds"]))
    params = load_params(_write(tmp_path, raw_params))
    assert active_arms(params.finetune) == ["ma2mi", "scratch", "baseline"]
    raw_params["finetune"]["baseline"]["folds"] = []
    raw_params["final"]["baseline"] = []
    assert active_arms(load_params(_write(tmp_path, raw_params)).finetune) == ["ma2mi", "scratch"]


def test_repeated_seeds_are_an_error(tmp_path, raw_params):
    raw_params["finetune"]["recipe"]["seeds"] = [0, 0, 1]
    with pytest.raises(ConfigError, match=r"finetune.recipe.seeds: .*distinct"):
        load_params(_write(tmp_path, raw_params))


def _readme_experiment(repo, tmp_path, name: str):
    """The params that README's `dvc exp run -n <name> -S ...` command gives, applied by DVC's own override parser."""
    import re
    import shlex
    import shutil

    from dvc.utils.hydra import apply_overrides

    readme = (repo / "docs" / "models.md").read_text()
    command = re.search(rf"^dvc exp run -n {name}(?:.*\\\n)*.*$", readme, re.M)  # with its continued lines
    assert command, f"docs/models.md: the {name} command is missing"
    tokens = shlex.split(command.group(0).replace("\\\n", " "))
    overrides = [tokens[i + 1] for i, token in enumerate(tokens) if token == "-S"]
    path = tmp_path / "params.yaml"
    shutil.copy(repo / "params.yaml", path)
    apply_overrides(path, overrides)
    return load_params(path)


def test_readme_mmnet_recipe_command_sets_the_reference_recipe(repo, tmp_path):
    """The README's `dvc exp run -S ...` command gives valid params with MMNet's published recipe (DESIGN §5) for
    every arm, at 224 px."""
    params = _readme_experiment(repo, tmp_path, "mmnet-recipe")
    f, r = params.finetune, params.finetune.recipe
    assert (r.epochs, r.batch_size, r.lr, r.weight_decay) == (74, 32, 8e-4, 0.6)
    assert (r.schedule, r.lr_gamma, r.decay_epochs) == ("exponential", 0.987, 50)
    assert (r.flip, r.rotate_deg, r.translate_px, r.label_smoothing) == (True, 3.0, 15, 0.0)
    assert (f.baseline.model, f.baseline.image_size_px) == ("mmnet", 224)
    assert params.final.baseline == ["mmnet"]  # final_baseline@<model> trains the arm's own model
    assert active_arms(f) == ["ma2mi", "scratch", "baseline"] and f.baseline.folds == f.folds
    assert params.model.image_size_px == params.micro.image_size_px == params.macro.image_size_px == 224


def test_readme_ststnet_recipe_command_sets_the_reference_recipe(repo, tmp_path):
    """STSTNet's reference recipe (christy1206/STSTNet main.py: Adam, constant lr 5e-5, batch 256, 800 epochs, no
    augmentation) as README's experiment: AdamW without weight decay, an exponential schedule with gamma 1."""
    r = _readme_experiment(repo, tmp_path, "ststnet-recipe").finetune.recipe
    assert (r.epochs, r.batch_size, r.lr, r.weight_decay) == (800, 256, 5e-5, 0.0)
    assert (r.schedule, r.lr_gamma) == ("exponential", 1.0)
    assert (r.flip, r.rotate_deg, r.translate_px, r.label_smoothing) == (False, 0.0, 0, 0.0)


def test_a_final_baseline_that_is_not_the_baseline_arm_is_refused_at_load(tmp_path, raw_params):
    raw_params["finetune"]["baseline"]["model"] = "resnet18-diff"  # final.baseline still [ststnet]
    with pytest.raises(ConfigError, match=r"final.baseline is \['ststnet'\]: it must be \[\] or \[resnet18-diff\]"):
        load_params(_write(tmp_path, raw_params))
    raw_params["final"]["baseline"] = ["resnet18-diff"]
    assert load_params(_write(tmp_path, raw_params)).final.baseline == ["resnet18-diff"]
    raw_params["finetune"]["baseline"]["folds"] = []  # the arm off
    with pytest.raises(ConfigError, match=r"with the baseline arm on"):
        load_params(_write(tmp_path, raw_params))


def test_an_arm_changes_its_own_recipe_only(tmp_path, raw_params):
    from pipeline.arms import ARMS
    from pipeline.config import ArmRecipes

    assert set(ArmRecipes.model_fields) == set(ARMS)  # one entry per arm, none more
    raw_params["finetune"]["arm_recipes"]["baseline"] = {"lr": 0.003, "epochs": 50}
    finetune = load_params(_write(tmp_path, raw_params)).finetune
    assert (finetune.arm_recipe("baseline").lr, finetune.arm_recipe("baseline").epochs) == (0.003, 50)
    assert finetune.arm_recipe("ma2mi") == finetune.recipe  # {}: the shared recipe
    assert finetune.arm_recipe("baseline").seeds == finetune.recipe.seeds


@pytest.mark.parametrize(("change", "message"), [
    ({"seeds": [0]}, r"finetune\.arm_recipes.*scratch: \['seeds'\] cannot differ between arms"),
    ({"lr": -1.0}, r"arm_recipes\.scratch: lr: Input should be greater than 0"),
    ({"epochs": True}, r"arm_recipes\.scratch: epochs"),
])
def test_an_arm_recipe_that_breaks_the_pairing_or_the_recipe_is_an_error(tmp_path, raw_params, change, message):
    raw_params["finetune"]["arm_recipes"]["scratch"] = change
    with pytest.raises(ConfigError, match=message):
        load_params(_write(tmp_path, raw_params))
