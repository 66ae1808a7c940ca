"""Training runs side by side in one workspace share no file (issue 24, item 3).

Under ``dvc repro`` (``DVC_ROOT``, ``DVC_STAGE``) or ``dvc exp run`` (also ``DVC_EXP_BASELINE_REV``, ``DVC_EXP_NAME``)
``dvclive.Live`` writes ``<DVC_ROOT>/.dvc/tmp/exps/run/DVCLIVE_STEP_COMPLETED`` after every step and removes it in
``end()`` check-then-remove, so two runs of a fold stage ending at once crashed one (observed: ``finetune_scratch@6``,
``FileNotFoundError`` from ``dvclive/vscode.py``). The runs now log with :class:`pipeline.train.engine.EpochCurves`: the
same files, byte for byte, in each run's own folder, and nothing else.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.config import Params, load_params
from pipeline.data.micro_table import SAMPLES_FILE, SUMMARY_FILE
from pipeline.io import encode_png
from pipeline.train.engine import EpochCurves
from stages.finetune import TrainingRunsFailed, gather_runs, run_name
from tests.conftest import shrink

SIGNAL = Path(".dvc", "tmp", "exps", "run", "DVCLIVE_STEP_COMPLETED")
REPRO_ENV = {"DVC_STAGE": "finetune_scratch@0"}  # and DVC_ROOT: the workspace (dvc/stage/run.py)
EXP_ENV = {"DVC_EXP_BASELINE_REV": "0" * 40, "DVC_EXP_NAME": "exp-race"}  # dvc exp run (experiments/queue/base.py)
METRICS = [{"loss": 1.25, "accuracy": 0.5}, {"loss": 0.75, "accuracy": 2 / 3}, {"loss": float("nan"), "accuracy": 1}]


def dvc_workspace(root: Path) -> Path:
    """An empty DVC project (no Git) at ``root``."""
    from dvc.repo import Repo

    root.mkdir(parents=True, exist_ok=True)
    Repo.init(str(root), no_scm=True).close()
    return root


def files_under(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def fold_workspace(root: Path, raw_params: dict, seeds: list[int], epochs: int = 2) -> Params:
    """A DVC workspace with a tiny ingested micro dataset (3 subjects x 4 clips, 32 px) and its params.yaml."""
    dvc_workspace(root)
    raw = shrink(raw_params)
    raw["model"].update(image_size_px=32, action_input="difference")  # the samples below hold no optical flow
    raw["finetune"]["recipe"].update(epochs=epochs, batch_size=4, seeds=seeds)
    raw["finetune"]["label_budgets"] = [1]
    raw["paths"].update(micro_dir=str(root / "micro"), finetune_dir=str(root / "finetune"),
                        checkpoint_dir=str(root / ".cache" / "checkpoints"))
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    rng = np.random.default_rng(0)
    images = [encode_png(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(24)]
    labels = np.tile([0, 1, 2, 0], 3)
    samples = pd.DataFrame({
        "sample_id": [f"s{i}" for i in range(12)], "dataset": "demo", "source_dataset": "demo",
        "subject": np.repeat(["a", "b", "c"], 4), "clip": [f"c{i}" for i in range(12)], "label": labels,
        "label_name": np.array(["neg", "pos", "sur"])[labels], "onset_image": images[:12], "apex_image": images[12:]})
    (root / "micro").mkdir()
    samples.to_parquet(root / "micro" / SAMPLES_FILE)
    (root / "micro" / SUMMARY_FILE).write_text('{"classes": ["neg", "pos", "sur"]}')
    return load_params(root / "params.yaml")


# --- the old mechanism: what DVCLive's Live does in a workspace ------------------------------------------------

def test_dvclive_end_of_two_runs_in_one_workspace_races(tmp_path, monkeypatch):
    """The bug itself, in DVCLive 3.x: what ``Live.next_step()`` and ``Live.end()`` do to the shared signal file
    (write it; remove it if it exists), done by two runs at once, raises FileNotFoundError in one of them. Two
    threads stand in for two worker processes: the check and the removal are two system calls either way (two
    processes hit it a few times a second on 2 cores, measured). This is why no training run may call them."""
    from dvclive.vscode import cleanup_dvclive_step_completed, mark_dvclive_step_completed

    monkeypatch.setenv("DVC_ROOT", str(dvc_workspace(tmp_path / "ws")))
    raced, stop = [], threading.Event()

    def run() -> None:
        end = time.monotonic() + 20
        while time.monotonic() < end and not stop.is_set():
            mark_dvclive_step_completed(0)
            try:
                cleanup_dvclive_step_completed()
            except FileNotFoundError as error:
                raced.append(error)
                stop.set()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert raced and raced[0].filename.endswith(str(SIGNAL))


@pytest.mark.parametrize("env", [REPRO_ENV, {**REPRO_ENV, **EXP_ENV}], ids=["dvc repro", "dvc exp run"])
def test_epoch_curves_write_live_bytes_and_nothing_outside_their_folder(tmp_path, monkeypatch, env):
    """EpochCurves gives DVCLive's files byte for byte (the curves evaluate.py reads), and, in a stage's DVC
    environment, touches no file of the workspace but its own folder; Live, in the same environment, writes the
    shared signal file (so the check can fail)."""
    from dvclive import Live

    ws = dvc_workspace(tmp_path / "ws")
    monkeypatch.chdir(ws)
    for key, value in {**env, "DVC_ROOT": str(ws)}.items():
        monkeypatch.setenv(key, value)
    before = files_under(ws)

    curves = EpochCurves(ws / "ours" / "seed0", prefix="train/")
    for epoch, metrics in enumerate(METRICS):
        curves(epoch, metrics)
    ours = files_under(ws / "ours" / "seed0")
    assert files_under(ws) == before | {f"ours/seed0/{name}": data for name, data in ours.items()}
    assert not (ws / SIGNAL.parent).exists()

    with Live(dir=str(ws / "live" / "seed0"), save_dvc_exp=False, dvcyaml=None) as live:
        for metrics in METRICS:
            for key, value in metrics.items():
                live.log_metric(f"train/{key}", value)
            live.next_step()
            assert (ws / SIGNAL).is_file()  # the file two runs' end() both remove
    assert files_under(ws / "live" / "seed0") == ours
    assert set(ours) == {"metrics.json", "plots/metrics/train/loss.tsv", "plots/metrics/train/accuracy.tsv"}
    assert ours["plots/metrics/train/loss.tsv"] == b"step\tloss\n0\t1.25\n1\t0.75\n2\tnan\n"


def test_epoch_curves_start_afresh(tmp_path):
    """A rerun's curves are whole and only its own: the folder is emptied first (as Live clears its files)."""
    curves = EpochCurves(tmp_path / "c")
    curves(0, {"loss": 2.0})
    (tmp_path / "c" / "stray.txt").write_text("x")
    curves = EpochCurves(tmp_path / "c")
    curves(0, {"loss": 1.0})
    assert files_under(tmp_path / "c") == {"metrics.json": b'{\n    "loss": 1.0,\n    "step": 0\n}\n',
                                           "plots/metrics/loss.tsv": b"step\tloss\n0\t1.0\n"}
    with pytest.raises(TypeError, match="metric 'loss' of epoch 1 is a list"):
        curves(1, {"loss": [1.0]})


# --- many short runs in parallel, repeatedly, in one workspace ----------------------------------------------

DVC_KEYS = ("DVC_ROOT", *REPRO_ENV, *EXP_ENV)


def _worker_init(workspace: str) -> None:
    """A Dask worker of a stage: in the project's folder."""
    os.chdir(workspace)


def _train(env: dict[str, str], params: Params, arm: str, fold: int, seed: int, budget: int | None, out: Path,
           state_path: Path) -> pd.DataFrame:
    """:func:`pipeline.train.fold_run.train_run` with the DVC environment ``env`` (as a stage's worker inherits it)."""
    from pipeline.models.registry import arm_model
    from pipeline.train.fold_run import train_run

    for key in DVC_KEYS:
        os.environ.pop(key, None)
    os.environ.update(env)
    return train_run(paths=params.paths, arm=arm, model=arm_model(arm, finetune=params.finetune, model=params.model),
                     recipe=params.finetune.recipe, fold=fold, seed=seed, budget=budget, out=out, state_path=state_path)


@pytest.mark.slow  # ~15-30 s: two spawned workers import torch (86 s on a loaded 2-core machine)
def test_many_short_runs_in_parallel_in_one_workspace(tmp_path, raw_params):
    """Four rounds of 8 short training runs (4 seeds, all labels and a label budget) on 2 worker processes at once
    in one workspace, with a stage's DVC environment (``dvc repro``'s, then ``dvc exp run``'s): every run passes
    every time, each run's curves are whole, and no run writes outside its own outputs and state (no signal file
    appears in the workspace: on the old code, Live wrote it there after every epoch)."""
    seeds = [0, 1, 2, 3]
    ws = tmp_path / "ws"
    params = fold_workspace(ws, raw_params, seeds, epochs=2)
    shared = files_under(ws)
    runs = [(budget, seed) for budget in (None, 1) for seed in seeds]
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                             initargs=(str(ws),)) as pool:
        for attempt, env in enumerate([REPRO_ENV, {**REPRO_ENV, **EXP_ENV}] * 2):
            env = {**env, "DVC_ROOT": str(ws)}
            out, states = ws / "finetune" / f"round{attempt}", ws / ".cache" / f"round{attempt}"
            futures = {run_name("scratch", 0, seed, budget): pool.submit(
                _train, env, params, "scratch", 0, seed, budget, out, states / f"{budget}_{seed}.pt")
                for budget, seed in runs}
            tables = gather_runs(futures, states)
            assert len(tables) == len(runs)
            for budget, seed in runs:
                curve = out / "dvclive" / (f"seed{seed}" if budget is None else f"budget{budget}/seed{seed}")
                loss = (curve / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
                assert loss[0] == "step\tloss" and [row.split("\t")[0] for row in loss[1:]] == ["0", "1"]
            assert not (ws / SIGNAL.parent).exists(), attempt
    written = {name for name in files_under(ws) if name not in shared}
    assert all(name.startswith(("finetune/round", ".cache/round")) for name in written), sorted(written)
    assert all(files_under(ws)[name] == data for name, data in shared.items())


# --- a failed run is named; the others end first ------------------------------------------------------------

def test_a_failed_run_is_named_with_its_error_after_every_run_ended():
    """The stage's error names each failed run (arm, fold, seed, label budget) and why; it comes once every other
    run has ended (their states are then complete for the rerun), chained to the run's own error."""
    def fail():
        raise ValueError("loss is NaN at epoch 3")

    def slow():
        time.sleep(0.5)
        return pd.DataFrame({"seed": [0]})

    with ThreadPoolExecutor(2) as pool:
        futures: dict[str, Future] = {run_name("scratch", 6, 1, 1): pool.submit(fail),
                                      run_name("scratch", 6, 0, None): pool.submit(slow)}
        with pytest.raises(TrainingRunsFailed) as raised:
            gather_runs(futures, Path("state"))
        assert all(future.done() for future in futures.values())
    message = str(raised.value)
    assert "1 of 2 training runs failed" in message
    assert "scratch fold 6 seed 1 budget 1: ValueError: loss is NaN at epoch 3" in message
    assert "The 1 finished runs are kept in state" in message
    assert isinstance(raised.value.__cause__, ValueError)
    assert run_name("ma2mi", 2, 3, None) == "ma2mi fold 2 seed 3"


RUN_FOLD = """
from stages.finetune import finetune_flow
from pipeline.orchestration.stage import run_stage
run_stage(finetune_flow, arm="scratch", fold=0, params_path="params.yaml")
"""


@pytest.mark.slow
def test_a_fold_stage_names_its_failed_run_and_its_rerun_takes_back_the_others(tmp_path, raw_params):
    """The real stage (Prefect flow, local Dask cluster of 2 workers) under dvc repro's environment: a run whose
    saved state is unreadable fails the stage with an error naming it; the other runs end and their states are
    kept; the rerun takes them back without training them, trains the failed run, succeeds, then removes them."""
    import subprocess
    import sys

    from stages.finetune import planned_runs, training_state_dir

    ws = tmp_path / "ws"
    params = fold_workspace(ws, raw_params, seeds=[0, 1], epochs=2)
    raw = yaml.safe_load((ws / "params.yaml").read_text())
    raw["finetune"]["workers"] = 2
    (ws / "params.yaml").write_text(yaml.safe_dump(raw))
    runs = planned_runs(params, "scratch", 0)
    broken = runs["scratch fold 0 seed 1"]["state_path"]
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a training state")
    env = {k: v for k, v in os.environ.items() if k not in ("DASK_SCHEDULER_ADDRESS", "PREFECT_API_URL")}
    env.update(REPRO_ENV, DVC_ROOT=str(ws), PYTHONPATH=os.pathsep.join(sys.path))

    def stage() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", RUN_FOLD], cwd=ws, env=env, capture_output=True, text=True,
                              timeout=600)

    failed = stage()
    assert failed.returncode != 0
    assert "1 of 4 training runs failed" in failed.stdout + failed.stderr
    assert "scratch fold 0 seed 1: UnpicklingError" in failed.stdout + failed.stderr
    assert not (ws / "finetune" / "scratch" / "fold0").exists()
    assert all(run["state_path"].is_file() for run in runs.values() if run["state_path"] != broken)
    broken.unlink()
    passed = stage()
    assert passed.returncode == 0, passed.stdout + passed.stderr
    log = passed.stdout + passed.stderr
    assert log.count("resuming from") == 3  # the finished runs, given back without training
    assert log.count("epoch 2/2:") == 1 and "miacnet seed 1 epoch 2/2:" in log  # only the failed run trained
    predictions = pd.read_parquet(ws / "finetune" / "scratch" / "fold0" / "predictions.parquet")
    assert sorted(set(zip(predictions["seed"], predictions["label_budget"], strict=True))) == [
        (0, "1"), (0, "all"), (1, "1"), (1, "all")]
    assert not training_state_dir(params, "scratch", 0).exists()
    assert not (ws / SIGNAL.parent).exists()
