"""Pre-training under torchrun (DDP, gloo on CPU): same outputs as one process, rank 0 writes, resumes, fails
clearly. Each torchrun launch costs about 10 s on a 2-core machine (two interpreters importing torch)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from pipeline.config import load_params
from pipeline.io import encode_png
from pipeline.models.registry import create_model
from pipeline.train.distributed import check_devices, resolve_device, run_torchrun
from pipeline.train.pretrain import train_and_save, training_state_path
from tests.conftest import REPO, shrink

EPOCHS = 2
TIMEOUT_S = 180  # per torchrun launch; a hang fails the test instead of blocking the suite

CRASH_WORKER = '''
import torch.distributed as dist

import pipeline.train.engine as engine
from pipeline.train import pretrain_ddp

save_state = engine._save_state


def save_then_crash(*args, **kwargs):
    save_state(*args, **kwargs)
    dist.barrier()  # rank 0 has written the state of the first epoch
    if dist.get_rank() == 1:
        raise RuntimeError("simulated crash after the first epoch")


engine._save_state = save_then_crash
pretrain_ddp.main()
'''


def _write_params(tmp: Path, raw_params: dict, nproc: int) -> Path:
    raw = shrink(raw_params)
    raw["model"]["image_size_px"] = 32
    raw["paths"].update(macro_dir=str(tmp / "macro"), checkpoint_dir=str(tmp / f"checkpoints{nproc}"))
    raw["pretrain"].update(epochs=EPOCHS, pairs_per_epoch=16, heldout_pairs=8, batch_size=8, device="cpu",
                           heldout_videos=["src/b"], nproc=nproc)
    path = tmp / f"params{nproc}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _write_macro_frames(macro_dir: Path) -> None:
    """Two 12-frame videos at 10 fps (``src/a`` trained on, ``src/b`` held out) of random 32 px images, as the
    ``demo`` source's shard (pre-training reads the sources of ``macro.sources``; ``samples`` has none)."""
    rng = np.random.default_rng(0)
    images = [encode_png(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(24)]
    frames = pd.DataFrame({"video": np.repeat(["src/a", "src/b"], 12), "frame_index": np.tile(np.arange(12), 2),
                           "time_s": np.tile(np.arange(12) / 10.0, 2), "image": images})
    (macro_dir / "demo").mkdir(parents=True)
    (macro_dir / "samples").mkdir()
    frames.to_parquet(macro_dir / "demo" / "frames-000.parquet", index=False)


def _torchrun(params: Path, out: Path, module: str = "pipeline.train.pretrain_ddp", pythonpath: str = str(REPO)) -> str:
    lines: list[str] = []
    env = {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"}
    try:
        run_torchrun(2, module, ["--params", str(params), "--out", str(out)], lines.append, env, TIMEOUT_S)
    finally:
        print("\n".join(lines))  # shown by pytest when the test fails
    return "\n".join(lines)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """The same tiny pre-training in one process (in-process) and in two (torchrun, gloo)."""
    tmp = tmp_path_factory.mktemp("ddp")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    _write_macro_frames(tmp / "macro")
    single, ddp = _write_params(tmp, dict(raw), 1), _write_params(tmp, yaml.safe_load(yaml.safe_dump(raw)), 2)
    (tmp / "out1").mkdir()
    train_and_save(load_params(single), tmp / "out1", resolve_device("cpu"), logging.getLogger(__name__))
    (tmp / "out2").mkdir()
    output = _torchrun(ddp, tmp / "out2")
    return {"tmp": tmp, "params": load_params(ddp), "ddp_params": ddp, "output": output}


def test_two_ranks_write_what_one_process_writes(runs):
    tmp, params = runs["tmp"], runs["params"]
    single, ddp = tmp / "out1", tmp / "out2"
    assert _files(ddp) == _files(single)  # encoder.pt, metrics.json, dvclive/...: nothing from rank 1 beside
    one, two = json.loads((single / "metrics.json").read_text()), json.loads((ddp / "metrics.json").read_text())
    assert one.keys() == two.keys()
    assert all(np.isfinite(v) for v in two.values())
    curve = ddp / "dvclive" / "plots" / "metrics" / "heldout_recon_over_copy.tsv"
    assert len(curve.read_text().splitlines()) == 1 + EPOCHS  # one writer: one row per epoch
    assert "[rank 1] INFO" not in runs["output"]  # rank 1 logs warnings only: each epoch's line once

    checkpoint = torch.load(ddp / "encoder.pt", map_location="cpu")
    reference = torch.load(single / "encoder.pt", map_location="cpu")
    assert checkpoint.keys() == reference.keys() and checkpoint["metrics"].keys() == one.keys()
    assert {k: v.shape for k, v in checkpoint["encoder"].items()} == \
        {k: v.shape for k, v in reference["encoder"].items()}
    model = create_model("miacnet", 3, params.model)
    fresh = {k: v.clone() for k, v in model.encoder_state_dict().items()}
    model.load_encoder_state_dict(checkpoint["encoder"])
    loaded = model.encoder_state_dict()
    assert any(not torch.equal(fresh[k], loaded[k]) for k in fresh if k.endswith("weight"))
    assert all(torch.equal(loaded[k], checkpoint["encoder"][k]) for k in loaded)


def test_crashed_rank_is_named_and_the_run_resumes_to_the_same_result(runs):
    tmp, params = runs["tmp"], runs["params"]
    state = training_state_path(params)
    state.unlink()  # the uninterrupted run left its final state; start over
    crash_dir = tmp / "crash_module"  # on PYTHONPATH: the worker, crashing rank 1 after the first epoch
    crash_dir.mkdir()
    (crash_dir / "crash_worker.py").write_text(CRASH_WORKER)
    (tmp / "out3").mkdir()
    with pytest.raises(RuntimeError, match=r"rank 1 failed: RuntimeError: simulated crash after the first epoch"):
        _torchrun(runs["ddp_params"], tmp / "out3", "crash_worker", f"{crash_dir}{os.pathsep}{REPO}")
    saved = torch.load(state, map_location="cpu", weights_only=False)
    assert saved["epoch"] == 0 and len(saved["ranks"]) == 2  # every rank's random streams

    (tmp / "out4").mkdir()
    output = _torchrun(runs["ddp_params"], tmp / "out4")
    assert "resuming from" in output
    resumed = torch.load(tmp / "out4" / "encoder.pt", map_location="cpu")
    uninterrupted = torch.load(tmp / "out2" / "encoder.pt", map_location="cpu")
    assert resumed["metrics"] == uninterrupted["metrics"]
    for key, value in uninterrupted["encoder"].items():
        assert torch.equal(resumed["encoder"][key], value), key


def test_more_processes_than_gpus_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(RuntimeError, match=r"2 processes need 2 GPUs \(one each\), 1 visible"):
        check_devices(2, torch.device("cuda"))
    check_devices(2, torch.device("cpu"))  # any number of processes on CPU


def test_nproc_must_divide_the_global_batch(raw_params, tmp_path):
    from pipeline.config import ConfigError

    raw = shrink(raw_params)
    raw["pretrain"].update(nproc=3, batch_size=16)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="divisible by nproc = 3"):
        load_params(tmp_path / "params.yaml")
