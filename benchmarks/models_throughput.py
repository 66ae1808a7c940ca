"""Training throughput of the models: forward + backward + AdamW step, samples per second, as a markdown table.

Usage:
    python -m benchmarks.models_throughput [--params params.yaml] [--models miacnet mmnet resnet18-diff]
        [--sizes 112 224] [--batch 8] [--threads 2] [--warmup 3] [--steps 8] [--devices auto]

Measures each model at each input side on the CPU (``torch.set_num_threads(--threads)``, float32) and, when a
GPU is present (``--devices auto``) or asked for, on CUDA with bf16 autocast (``--cuda-batch``, ``--cuda-warmup``,
``--cuda-steps``). Classifiers are timed on a cross-entropy loss with K = 5, ``ma2mi`` (optional) on its
reconstruction loss. MMNet takes 224 px only; at other sides its row says so. The table reports the median step
time over the timed steps (a shared CPU has outliers) and is printed to stdout; progress goes to the log.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.config import ModelParams, load_params
from pipeline.models.ma2mi import MA2MI
from pipeline.models.mmnet import MMNET_IMAGE_SIZE_PX
from pipeline.models.registry import MODELS, create_model

log = logging.getLogger("models_throughput")

NUM_CLASSES = 5
MODEL_NAMES = [*MODELS, "ma2mi"]


@dataclass(frozen=True)
class Run:
    """How one device is timed."""

    device: torch.device
    batch: int
    warmup: int
    steps: int


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], None], run: Run) -> float:
    """Median wall time of ``step()`` in seconds over ``run.steps`` calls after ``run.warmup`` calls."""
    for _ in range(run.warmup):
        step()
    sync(run.device)
    times = []
    for _ in range(run.steps):
        start = time.perf_counter()
        step()
        sync(run.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_step(model: torch.nn.Module, size: int, run: Run) -> Callable[[], None]:
    """One AdamW training step of ``model`` (already on ``run.device``) on a fixed random (onset, apex) batch;
    bf16 autocast on CUDA, float32 on CPU."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    onset = torch.randn(run.batch, 3, size, size, device=run.device)  # (B, 3, H, W)
    apex = onset + 0.05 * torch.randn_like(onset)  # (B, 3, H, W)
    labels = torch.randint(0, NUM_CLASSES, (run.batch,), device=run.device)
    autocast = run.device.type == "cuda"

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=autocast):
            if isinstance(model, MA2MI):
                loss = model.losses(onset, apex)["recon_loss"]
            else:
                loss = F.cross_entropy(model(onset, apex), labels)
        loss.backward()
        optimizer.step()

    return step


def build(name: str, params: ModelParams, size: int) -> torch.nn.Module:
    sized = ModelParams.model_validate({**params.model_dump(), "image_size_px": size})
    return MA2MI(sized) if name == "ma2mi" else create_model(name, NUM_CLASSES, sized)


def measure(name: str, params: ModelParams, size: int, run: Run) -> dict[str, str]:
    """One table row: the model's trainable parameters and its training throughput at ``size`` px on ``run``."""
    row = {"model": name, "device": run.device.type, "size px": str(size), "batch": str(run.batch)}
    if name == "mmnet" and size != MMNET_IMAGE_SIZE_PX:
        return row | {"params": "", "ms/step": f"n/a ({MMNET_IMAGE_SIZE_PX} px only)", "ms/sample": "",
                      "samples/s": ""}
    torch.manual_seed(0)
    model = build(name, params, size).to(run.device).train()
    seconds = time_steps(make_step(model, size, run), run)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("%s %s %dpx: %.1f ms/step", name, run.device.type, size, 1e3 * seconds)
    return row | {
        "params": f"{n_params:,}",
        "ms/step": f"{1e3 * seconds:.1f}",
        "ms/sample": f"{1e3 * seconds / run.batch:.2f}",
        "samples/s": f"{run.batch / seconds:.1f}",
    }


def markdown_table(rows: list[dict[str, str]]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(row[c] for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def runs_for(args: argparse.Namespace) -> list[Run]:
    """CPU always (unless ``--devices cuda``); CUDA when present (``auto``) or asked for (``cuda``, ``all``)."""
    runs = []
    if args.devices in ("auto", "cpu", "all"):
        runs.append(Run(torch.device("cpu"), args.batch, args.warmup, args.steps))
    if args.devices in ("cuda", "all") or (args.devices == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise SystemExit(f"--devices {args.devices}: no CUDA device is available")
        runs.append(Run(torch.device("cuda"), args.cuda_batch, args.cuda_warmup, args.cuda_steps))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=list(MODELS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[112, 224], help="input sides in px")
    parser.add_argument("--devices", choices=["auto", "cpu", "cuda", "all"], default="auto")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--cuda-batch", type=int, default=32)
    parser.add_argument("--cuda-warmup", type=int, default=10)
    parser.add_argument("--cuda-steps", type=int, default=30)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    params = load_params(args.params).model
    rows = [
        measure(name, params, size, run)
        for run in runs_for(args)
        for name in args.models
        for size in args.sizes
    ]
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
