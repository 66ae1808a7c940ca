"""A killed fine-tuning run resumes from its last epoch and ends exactly as an uninterrupted run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.config import load_params
from pipeline.data.loso import loso_fold
from pipeline.data.micro import MicroTensors
from pipeline.io import encode_png
from pipeline.models.registry import ArmModel
from pipeline.train.engine import seed_everything
from pipeline.train.finetune import finetune_fold
from tests.conftest import shrink


class Killed(RuntimeError):
    pass


@pytest.fixture()
def setup(tmp_path, raw_params):
    import yaml

    raw = shrink(raw_params)
    raw["model"].update(image_size_px=32, action_input="difference")  # the samples below hold no optical flow
    raw["finetune"]["recipe"].update(epochs=3, batch_size=4)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(tmp_path / "params.yaml")
    rng = np.random.default_rng(0)
    images = [encode_png(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(24)]
    samples = pd.DataFrame({"subject": np.repeat(["a", "b", "c"], 4), "label": np.tile([0, 1, 2, 0], 3),
                            "onset_image": images[:12], "apex_image": images[12:]})
    data = MicroTensors(samples, 32)
    return params, data, loso_fold(samples["subject"], 0)


def _run(params, data, fold, **kwargs):
    model = finetune_fold(data, fold, num_classes=3, model=ArmModel("miacnet", params.model),
                          params=params.finetune.recipe, seed=0, device=torch.device("cpu"), progress=False, **kwargs)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_resume_equals_uninterrupted(setup, tmp_path):
    params, data, fold = setup
    uninterrupted = _run(params, data, fold)

    def kill_after_first_epoch(epoch, metrics):
        if epoch == 0:
            raise Killed

    state = tmp_path / "state.pt"
    with pytest.raises(Killed):
        _run(params, data, fold, state_path=state, fingerprint="f", save_every_s=0, on_epoch=kill_after_first_epoch)
    assert state.is_file()
    seen = []
    resumed = _run(params, data, fold, state_path=state, fingerprint="f",
                   on_epoch=lambda epoch, metrics: seen.append(epoch))
    assert seen == [0, 1, 2]  # epoch 0 replayed from the saved history, 1 and 2 trained
    assert uninterrupted.keys() == resumed.keys()
    for key in uninterrupted:
        assert torch.equal(uninterrupted[key], resumed[key]), key


def test_state_of_another_configuration_is_not_resumed(setup, tmp_path):
    params, data, fold = setup
    state = tmp_path / "state.pt"
    _run(params, data, fold, state_path=state, fingerprint="old")
    seen = []
    _run(params, data, fold, state_path=state, fingerprint="new", on_epoch=lambda epoch, metrics: seen.append(epoch))
    assert seen == [0, 1, 2]
    assert torch.load(state, weights_only=False)["fingerprint"] == "new"


def write_macro_shards(macro_dir, videos=("a", "b"), frames_per_video=12, side=32, fps=10.0, seed=0):
    """Shards as ingest_macro writes them: ``<macro_dir>/src/frames-<video>-00000.parquet``, random RGB frames."""
    rng = np.random.default_rng(seed)
    (macro_dir / "src").mkdir(parents=True, exist_ok=True)
    for video in videos:
        images = [encode_png(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)) for _ in range(frames_per_video)]
        pd.DataFrame({"video": video, "frame_index": np.arange(frames_per_video),
                      "time_s": np.arange(frames_per_video) / fps, "image": images},
                     ).to_parquet(macro_dir / "src" / f"frames-{video}-00000.parquet", index=False)


@pytest.mark.parametrize("workers", [0, 1])
def test_pretraining_resume_equals_uninterrupted(tmp_path, raw_params, workers):
    import yaml

    from pipeline.data.macro import MacroFrames, macro_shards
    from pipeline.train.pretrain import pretrain

    raw = shrink(raw_params)
    raw["model"]["image_size_px"] = 32
    raw["pretrain"].update(epochs=3, pairs_per_epoch=16, heldout_pairs=8, batch_size=8, heldout_videos=["b"])
    raw["pretrain"]["loader"]["workers"] = workers
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params(tmp_path / "params.yaml")
    write_macro_shards(tmp_path / "macro")
    frames = MacroFrames(macro_shards(tmp_path / "macro", ["src"]), 32)

    def run(**kwargs):
        seed_everything(0)
        model, metrics = pretrain(frames, params.model, params.pretrain, torch.device("cpu"), progress=False,
                                  **kwargs)
        return {k: v.clone() for k, v in model.state_dict().items()}, metrics

    uninterrupted, metrics = run()

    def kill_after_first_epoch(epoch, _):
        if epoch == 0:
            raise Killed

    state = tmp_path / "pretrain.pt"
    with pytest.raises(Killed):
        run(state_path=state, fingerprint="f", on_epoch=kill_after_first_epoch)
    resumed, resumed_metrics = run(state_path=state, fingerprint="f")
    assert resumed_metrics == metrics
    for key in uninterrupted:
        assert torch.equal(uninterrupted[key], resumed[key]), key


def test_a_finished_seed_is_given_back_without_training(setup, tmp_path, monkeypatch):
    """The fine-tuning stage keeps each finished seed's state until its outputs are in place, so a stage killed
    at a later seed gets the earlier seeds' final weights back without training them again."""
    import pipeline.train.engine

    params, data, fold = setup
    state = tmp_path / "seed0.pt"
    finished = _run(params, data, fold, state_path=state, fingerprint="f")

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run must not train again")

    monkeypatch.setattr(pipeline.train.engine, "train_one_epoch", no_training)
    seen = []
    again = _run(params, data, fold, state_path=state, fingerprint="f", on_epoch=lambda e, m: seen.append(e))
    assert seen == [0, 1, 2]  # the whole curve is replayed for DVCLive
    for key in finished:
        assert torch.equal(finished[key], again[key]), key


def test_a_state_is_saved_when_due_and_always_after_the_last_epoch(setup, tmp_path):
    """With ``save_every_s`` longer than the run, no state exists mid-run (a kill restarts from epoch 1, ending as an
    uninterrupted run), and the finished run's state is saved (its final weights are given back)."""
    params, data, fold = setup
    uninterrupted = _run(params, data, fold)
    state = tmp_path / "state.pt"

    def kill_after_first_epoch(epoch, metrics):
        if epoch == 0:
            raise Killed

    with pytest.raises(Killed):
        _run(params, data, fold, state_path=state, fingerprint="f", save_every_s=3600, on_epoch=kill_after_first_epoch)
    assert not state.exists()
    seen = []
    restarted = _run(params, data, fold, state_path=state, fingerprint="f", save_every_s=3600,
                     on_epoch=lambda epoch, metrics: seen.append(epoch))
    assert seen == [0, 1, 2]
    assert torch.load(state, weights_only=False)["epoch"] == 2
    for key in uninterrupted:
        assert torch.equal(uninterrupted[key], restarted[key]), key


def test_batches_without_the_flow_hold_the_same_frames(setup):
    """A model that does not read the flow gets the frames it would get with the flow: same random draws."""
    from pipeline.data.tensors import PairAugmentation

    _, data, fold = setup
    data.flow = torch.randn(len(data.label), 3, 32, 32)
    augment = PairAugmentation(True, 3.0, 4)
    batches = {}
    for with_flow in (True, False):
        seed_everything(0)
        batches[with_flow] = list(data.batches(fold.train_idx, 4, torch.Generator().manual_seed(0), augment,
                                               with_flow=with_flow))
    assert all("flow" in b for b in batches[True]) and not any("flow" in b for b in batches[False])
    for a, b in zip(batches[True], batches[False], strict=True):
        for key in ("onset", "apex", "label"):
            assert torch.equal(a[key], b[key]), key


def test_a_fold_run_trains_on_one_thread(monkeypatch, tmp_path):
    """A fold stage's run trains on ONE thread whatever the device resolution does (on CPU it hands torch every
    core): two runs of two threads each on a 2-core machine ran 10x slower, and results depend on the threads."""
    import pipeline.train.fold_run as fold_run
    from tests.conftest import REPO

    seen = {}
    monkeypatch.setattr(fold_run, "fold_inputs", lambda **kwargs: fold_run.FoldInputs(
        pd.DataFrame(), [], None, None, None, ""))
    monkeypatch.setattr(fold_run, "finetune_seed", lambda **kwargs: seen.setdefault("threads", torch.get_num_threads()))
    params = load_params(REPO / "params.yaml")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fold_run.train_run(paths=params.paths, arm="scratch", model=ArmModel("miacnet", params.model),
                           recipe=params.finetune.recipe, fold=0, seed=0, budget=None, out=tmp_path,
                           state_path=tmp_path / "state.pt")
    finally:
        torch.set_num_threads(threads)
    assert seen["threads"] == 1


def test_a_rerun_of_a_failed_fold_stage_takes_back_its_finished_runs(tmp_path, raw_params, monkeypatch):
    """A fold stage whose run failed names it, keeps the finished runs' states, and its rerun gives those runs back
    (same predictions, weights and curves, byte for byte) without training them; only the failed run trains."""
    from concurrent.futures import ThreadPoolExecutor

    import pipeline.train.engine
    import pipeline.train.finetune
    from pipeline.train.fold_run import train_run
    from stages.finetune import TrainingRunsFailed, gather_runs, planned_runs, training_state_dir
    from tests.test_parallel_runs import files_under, fold_workspace

    ws = tmp_path / "ws"
    params = fold_workspace(ws, raw_params, seeds=[0, 1], epochs=2)
    monkeypatch.chdir(ws)
    runs = planned_runs(params, "scratch", 0)
    assert list(runs) == ["scratch fold 0 seed 0", "scratch fold 0 seed 1", "scratch fold 0 seed 0 budget 1",
                          "scratch fold 0 seed 1 budget 1"]
    real_fold, real_epoch = pipeline.train.finetune.finetune_fold, pipeline.train.engine.train_one_epoch

    def seed1_fails(*args, **kwargs):
        if kwargs["state_path"].name == "seed1.pt":
            raise OSError("No space left on device")
        return real_fold(*args, **kwargs)

    def attempt(out):
        with ThreadPoolExecutor(1) as pool:  # one run at a time, in this process (so the patches apply)
            futures = {name: pool.submit(train_run, paths=params.paths, arm="scratch",
                                         model=ArmModel("miacnet", params.model), recipe=params.finetune.recipe,
                                         fold=0, seed=run["seed"], budget=run["budget"], out=out,
                                         state_path=run["state_path"]) for name, run in runs.items()}
            try:
                return futures, gather_runs(futures, training_state_dir(params, "scratch", 0))
            except TrainingRunsFailed as error:
                return futures, error

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        monkeypatch.setattr(pipeline.train.finetune, "finetune_fold", seed1_fails)
        first, failed = attempt(ws / "out1")
        assert isinstance(failed, TrainingRunsFailed)
        assert "1 of 4 training runs failed:\n  scratch fold 0 seed 1: OSError: No space left on device" in str(failed)
        assert not (runs["scratch fold 0 seed 1"]["state_path"]).exists()
        assert all(run["state_path"].is_file() for name, run in runs.items() if name != "scratch fold 0 seed 1")

        running, trained = [], []

        def named_fold(*args, **kwargs):
            running.append(kwargs["state_path"].name)
            return real_fold(*args, **kwargs)

        monkeypatch.setattr(pipeline.train.finetune, "finetune_fold", named_fold)
        monkeypatch.setattr(pipeline.train.engine, "train_one_epoch",
                            lambda *args: trained.append(f"{running[-1]} {args[5]}") or real_epoch(*args))
        _, tables = attempt(ws / "out2")
    finally:  # train_run sets both for its process
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    assert running == ["seed0.pt", "seed1.pt", "budget1_seed0.pt", "budget1_seed1.pt"]
    assert trained == ["seed1.pt fold 0 (a) miacnet seed 1 epoch 1/2", "seed1.pt fold 0 (a) miacnet seed 1 epoch 2/2"]
    for table, (name, future) in zip(tables, first.items(), strict=True):
        if name != "scratch fold 0 seed 1":
            pd.testing.assert_frame_equal(table, future.result())
    assert (ws / "out2" / "model_seed0.pt").read_bytes() == (ws / "out1" / "model_seed0.pt").read_bytes()
    for curve in ("seed0", "budget1/seed0", "budget1/seed1"):
        assert files_under(ws / "out2" / "dvclive" / curve) == files_under(ws / "out1" / "dvclive" / curve), curve
