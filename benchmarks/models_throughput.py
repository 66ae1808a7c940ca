"""Training throughput of MIACNet and MA2MI on CPU: forward + backward + AdamW step, samples per second.

Usage:
    python -m benchmarks.models_throughput [--params params.yaml] [--batch 16] [--size 112] [--threads 2]

Logs one line per model: parameter count, median step time, ms per sample and samples/s over ``--steps``
timed steps (after ``--warmup`` untimed ones). The median is reported because a shared CPU has outliers.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from pipeline.config import load_params
from pipeline.models import MA2MI, MIACNet

log = logging.getLogger("models_throughput")


def time_steps(step: Callable[[], None], warmup: int, steps: int) -> float:
    """Median wall time of ``step()`` in seconds over ``steps`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_step(model: torch.nn.Module, batch: int, size: int, num_classes: int) -> Callable[[], None]:
    """One AdamW training step of ``model`` on a fixed random batch of (onset, apex) pairs."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    onset = torch.randn(batch, 3, size, size)  # (B, 3, H, W)
    apex = onset + 0.05 * torch.randn_like(onset)  # (B, 3, H, W)
    labels = torch.randint(0, num_classes, (batch,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        if isinstance(model, MA2MI):
            loss = model.losses(onset, apex)["recon_loss"]
        else:
            loss = F.cross_entropy(model(onset, apex), labels)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=None, help="input side in px (default: model.image_size_px)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    params = load_params(args.params).model
    size = args.size or params.image_size_px
    models = {"miacnet": MIACNet(params, num_classes=3), "ma2mi": MA2MI(params)}
    for name, model in models.items():
        model.train()
        seconds = time_steps(make_step(model, args.batch, size, 3), args.warmup, args.steps)
        n_params = sum(p.numel() for p in model.parameters())
        log.info(
            "%-8s params=%d size=%dpx batch=%d threads=%d: %.1f ms/step, %.2f ms/sample, %.0f samples/s",
            name, n_params, size, args.batch, args.threads, 1e3 * seconds, 1e3 * seconds / args.batch,
            args.batch / seconds,
        )


if __name__ == "__main__":
    main()
