"""Data-parallel training on one machine: ``torchrun`` launch, process group, DDP, cross-rank reductions.

A stage that trains in ``nproc`` processes stays one Prefect flow: it launches ``torchrun`` as a subprocess
(:func:`run_torchrun`), every rank enters :func:`process_group` and wraps its model with :func:`wrap_ddp`.
Everything here also works in a single process without a process group (``world_size`` 1): the reductions
return their input unchanged and :func:`wrap_ddp` returns the module itself, so one code path serves both.

Backends: NCCL with one GPU per rank (``cuda:<LOCAL_RANK>`` among the GPUs that ``CUDA_VISIBLE_DEVICES``
shows), gloo on CPU. Only ``--standalone`` (one machine) is supported.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "RankInfo",
    "all_gather_objects",
    "all_reduce_means",
    "broadcast_buffers",
    "check_devices",
    "process_group",
    "rank_info",
    "rank_seed",
    "resolve_device",
    "run_torchrun",
    "torchrun_command",
    "wrap_ddp",
]

log = logging.getLogger(__name__)

_FAILED = re.compile(r"\brank (\d+) failed: (.*)")  # the line process_group logs when a rank raises
_TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def resolve_device(name: str) -> torch.device:
    """The device of ``pretrain.device`` / ``finetune.recipe.device``.

    ``'auto'`` gives CUDA when present, else CPU; on CPU torch gets every core this process may use.

    Raises:
        RuntimeError: ``'cuda'`` without a GPU.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA device is available")
    if name == "cpu":
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    return torch.device(name)


@dataclass(frozen=True)
class RankInfo:
    """This process's place in the process group.

    ``rank`` in ``[0, world_size)``, ``local_rank`` on this machine (= the GPU index on CUDA); ``(0, 0, 1)``
    without a process group.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs metrics and writes checkpoints and outputs."""
        return self.rank == 0


def rank_info() -> RankInfo:
    """The current process's :class:`RankInfo`; ``RankInfo()`` (rank 0 of 1) when no process group is up."""
    if not (dist.is_available() and dist.is_initialized()):
        return RankInfo()
    return RankInfo(dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_world_size())


def rank_seed(seed: int, rank: int) -> int:
    """Seed of ``rank``'s own random streams.

    ``seed`` itself on rank 0 (so a single process, rank 0 of 1, draws exactly what it drew before DDP existed),
    a 32-bit ``SeedSequence((seed, rank))`` draw on the others.
    """
    if rank == 0:
        return seed
    return int(np.random.SeedSequence((seed, rank)).generate_state(1)[0])


def check_devices(nproc: int, device: torch.device) -> None:
    """Check that ``nproc`` processes can run on ``device`` (one GPU each on CUDA; any number on CPU).

    Raises:
        RuntimeError: ``device`` is CUDA and fewer than ``nproc`` GPUs are visible (names
            ``CUDA_VISIBLE_DEVICES``).
    """
    if device.type == "cuda" and torch.cuda.device_count() < nproc:
        raise RuntimeError(f"{nproc} processes need {nproc} GPUs (one each), {torch.cuda.device_count()} visible "
                           f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")


@contextlib.contextmanager
def process_group(device: str) -> Iterator[tuple[RankInfo, torch.device]]:
    """Join the process group of the ``torchrun`` that started this process; leave it on exit, also on errors.

    Args:
        device: ``'auto'``, ``'cpu'`` or ``'cuda'`` (as in :func:`resolve_device`). On CUDA the
            rank takes ``cuda:<LOCAL_RANK>`` and NCCL; on CPU, gloo and ``cores // LOCAL_WORLD_SIZE`` threads.

    Yields:
        ``(RankInfo, torch.device)`` of this rank.

    Raises:
        RuntimeError: not started by ``torchrun`` (its environment variables are missing); CUDA requested but
            absent, or fewer GPUs than ranks on this machine. An exception inside the block is logged as
            ``rank <r> failed: <type>: <message>`` (the line :func:`run_torchrun` reports) and re-raised.
    """
    missing = [name for name in _TORCHRUN_ENV if name not in os.environ]
    if missing:
        raise RuntimeError(f"process_group() needs the environment torchrun sets; {missing} unset")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    local_world = int(os.environ["LOCAL_WORLD_SIZE"])
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        check_devices(local_world, resolved)
        resolved = torch.device("cuda", local_rank)
        torch.cuda.set_device(resolved)
    else:  # resolve_device gave every core to this process: share them among the ranks of this machine
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // local_world))
    dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo",
                            device_id=resolved if resolved.type == "cuda" else None)
    try:
        yield rank_info(), resolved
    except BaseException as err:
        log.error("rank %d failed: %s: %s", rank, type(err).__name__, str(err).splitlines()[0] if str(err) else "")
        raise
    finally:
        dist.destroy_process_group()


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(module)`` in a process group of more than one rank, else ``module`` itself.

    DDP synchronises gradients only for what runs through its ``forward``: call the returned module, not a
    method of the wrapped one. Every parameter must get a gradient in every step (``find_unused_parameters``
    is off). Construction broadcasts rank 0's parameters and buffers to every rank.
    """
    if rank_info().world_size == 1:
        return module
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def all_reduce_means(means: Mapping[str, float], count: int, device: torch.device) -> dict[str, float]:
    """Means over all ranks of per-rank means, weighted by each rank's ``count`` (e.g. samples).

    Args:
        means: this rank's means (every rank passes the same keys).
        count: how many items this rank's means are over (>= 0).
        device: where the reduction runs (the rank's device: NCCL reduces CUDA tensors only).

    Returns:
        ``{key: sum_r count_r * means_r[key] / sum_r count_r}`` in float64 arithmetic, in ``means``' key order;
        ``means`` unchanged without a process group.

    Raises:
        ValueError: the counts sum to 0.
    """
    if rank_info().world_size == 1:
        return dict(means)
    keys = list(means)
    totals = torch.tensor([means[k] * count for k in keys] + [count], dtype=torch.float64, device=device)
    dist.all_reduce(totals)  # (len(keys) + 1,): weighted sums, then the total count
    if totals[-1].item() == 0:
        raise ValueError("all_reduce_means: no rank had any item")
    return {key: (totals[i] / totals[-1]).item() for i, key in enumerate(keys)}


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable ``obj``, indexed by rank (``[obj]`` without a process group)."""
    world = rank_info().world_size
    if world == 1:
        return [obj]
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Overwrite every buffer of ``module`` with rank ``src``'s, in place; nothing without a process group.

    The buffers are e.g. BatchNorm running statistics, which each rank updates from its own batches.
    """
    if rank_info().world_size == 1:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src)


def torchrun_command(nproc: int, module: str, args: Sequence[str] = ()) -> list[str]:
    """The torchrun command line, with this interpreter.

    That is ``python -m torch.distributed.run --standalone --nproc-per-node=<nproc> -m <module> <args>``.
    """
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", module, *args]


def run_torchrun(nproc: int, module: str, args: Sequence[str] = (), log_line: Callable[[str], None] = log.info,
                 env: Mapping[str, str] | None = None, timeout_s: float | None = None) -> None:
    """Run ``python -m <module> <args>`` in ``nproc`` processes under ``torchrun`` and wait for them.

    Every output line (all ranks and torchrun itself, stdout and stderr) goes to ``log_line`` as it comes.
    ``OMP_NUM_THREADS`` defaults to ``cores // nproc``.

    Args:
        nproc: the number of processes (``--nproc-per-node``).
        module: the module each process runs (``python -m <module>``).
        args: its command-line arguments.
        log_line: called with each output line (without its newline), as it comes.
        env: the environment (default: this process's), ``PYTHONUNBUFFERED=1`` added.
        timeout_s: wall-clock limit in seconds; then torchrun is terminated (it stops its workers) and, 30 s
            later, killed.

    Raises:
        RuntimeError: a non-zero exit; the message gives the status and every ``rank <r> failed: ...`` line
            (see :func:`process_group`) in the order they came, or the output's last lines when there is none.
        TimeoutError: ``timeout_s`` passed.
    """
    env = dict(os.environ if env is None else env)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // nproc)))
    command = torchrun_command(nproc, module, args)
    log.info("launching: %s", " ".join(command))
    failures: list[str] = []
    tail: list[str] = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        expired = threading.Event()

        def stop() -> None:
            expired.set()
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
                return
            proc.kill()

        timer = threading.Timer(timeout_s, stop) if timeout_s is not None else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            for line in proc.stdout:
                line = line.rstrip("\n")
                log_line(line)
                tail = [*tail[-19:], line]
                if (match := _FAILED.search(line)) and match.group(0) not in failures:
                    failures.append(match.group(0))
            status = proc.wait()
        finally:
            if timer is not None:
                timer.cancel()
            if proc.poll() is None:  # interrupted while streaming (e.g. Ctrl-C): stop the ranks too
                proc.terminate()
    if expired.is_set():
        raise TimeoutError(f"torchrun with {nproc} processes ({module}) ran past {timeout_s} s and was stopped")
    if status != 0:
        causes = "; ".join(failures) if failures else "last output lines:\n" + "\n".join(tail)
        raise RuntimeError(f"torchrun with {nproc} processes ({module}) exited with status {status}: {causes}")
