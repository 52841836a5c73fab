"""Several training processes: which rank this is, sums over ranks, a launcher, and GPUs per local job.

Under torchrun, or ``launch`` below, every process is one rank of a ``torch.distributed`` group;
outside one, ``current_ranks`` is the single process (rank 0 of 1) and reductions do nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from cocoseg.device import kill_stuck_loader_workers
from cocoseg.logs import configure as configure_logging

log = logging.getLogger(__name__)

RANK_EXIT_GRACE_S = 10.0  # once one rank has ended, how long the others get to end on their own


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def current_ranks() -> Ranks:
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def all_reduce(tensor: torch.Tensor, ranks: Ranks, op: str = "sum") -> torch.Tensor:
    """In place over every rank (sum or max); the tensor itself with one process."""
    if ranks.world_size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor


@contextlib.contextmanager
def main_script_hidden() -> Iterator[None]:
    """While processes are spawned, the parent's main script is not re-run in them.

    A spawned child first re-imports the parent's ``__main__`` from its ``__spec__`` or
    ``__file__``. Under Snakemake that is the rule script, whose ``snakemake`` object only the
    preamble of Snakemake's temporary copy defines (``__file__`` names the original): the child
    dies with a NameError, and would start the job over if it did not. The ranks need only the
    function they run, which pickle imports by its module's name.
    """
    main = sys.modules["__main__"]
    saved = {name: main.__dict__[name] for name in ("__file__", "__spec__") if name in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rank_main(rank: int, world_size: int, port: int, backend: str, log_file: str | None,
               target: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    configure_logging(log_file, append=True, prefix=f"[rank {rank}] ")
    os.environ.update(LOCAL_RANK=str(rank), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(world_size))
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        target(*args, **kwargs)
    finally:
        try:
            dist.destroy_process_group()
        finally:
            kill_stuck_loader_workers()


def launch(world_size: int, target: Callable[..., Any], args: tuple, kwargs: dict, backend: str | None = None,
           log_file: str | None = None) -> None:
    """``target(*args, **kwargs)`` in ``world_size`` spawned ranks (NCCL with CUDA, else gloo), as torchrun would.

    Each rank appends to ``log_file``. SIGTERM is passed on to the ranks. A rank that fails ends
    them all: ``torch.multiprocessing.ProcessExitedException`` carries its exit code.
    """
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    with main_script_hidden():
        context = torch.multiprocessing.start_processes(
            _rank_main, args=(world_size, _free_port(), backend, log_file, target, args, kwargs), nprocs=world_size,
            join=False, start_method="spawn")

    forwarded = []

    def forward_sigterm(*_: Any) -> None:
        forwarded.append(True)
        for process in context.processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    previous_handler = signal.signal(signal.SIGTERM, forward_sigterm)
    try:
        while not context.join(grace_period=RANK_EXIT_GRACE_S):
            pass
    except torch.multiprocessing.ProcessExitedException as failure:
        if forwarded and failure.exit_code == -signal.SIGTERM:
            # A rank signalled before its training installed the handler died of it: a pre-emption all the same.
            raise torch.multiprocessing.ProcessExitedException(
                "a rank was pre-empted before training started", failure.error_index, failure.error_pid,
                exit_code=143) from failure
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


def machine_gpus() -> int:
    """NVIDIA GPUs the driver lists, without initialising CUDA (which would fix the visible devices too early)."""
    listing = Path("/proc/driver/nvidia/gpus")
    return len(list(listing.iterdir())) if listing.is_dir() else 0


def _lock_free_slots(files: list[Path], count: int) -> list[tuple[int, Any]] | None:
    """Exclusive locks on ``count`` of ``files``, or None (and nothing held) when fewer are free."""
    held = []
    for index, path in enumerate(files):
        handle = open(path, "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        held.append((index, handle))
        if len(held) == count:
            return held
    for _, handle in held:
        handle.close()
    return None


@contextlib.contextmanager
def claimed_gpus(count: int, total: int | None = None, lock_dir: str | Path | None = None,
                 timeout: float | None = None) -> Iterator[list[int]]:
    """This job's own GPUs, named in ``CUDA_VISIBLE_DEVICES`` while it runs.

    Snakemake's local executor counts the ``gpu`` resource but assigns no device, so every job
    would see every GPU and train on ``cuda:0``. Each job locks ``count`` free slots, one file per
    GPU in ``lock_dir`` (default ``$TMPDIR/cocoseg-gpus-<uid>``), until it ends; the kernel drops
    the locks of a process that dies. Where a scheduler has set ``CUDA_VISIBLE_DEVICES`` already
    (Slurm), or the machine has no GPU, nothing changes and the list is empty. A job that finds no
    free GPU waits for one (``timeout`` seconds at most, default without end): without
    ``--resources gpu=N`` Snakemake starts more GPU jobs than there are GPUs, and they take turns.
    """
    total = machine_gpus() if total is None else total
    if count < 1 or total == 0:
        yield []
        return
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        if "SLURM_JOB_ID" not in os.environ:
            log.warning("CUDA_VISIBLE_DEVICES=%s is set: this job uses those GPUs and claims none",
                        os.environ["CUDA_VISIBLE_DEVICES"])
        yield []
        return
    if count > total:
        raise ValueError(f"a job asks for {count} GPUs and this machine has {total}; lower train.gpus")
    folder = Path(lock_dir or Path(tempfile.gettempdir()) / f"cocoseg-gpus-{os.getuid()}")
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"gpu{index}.lock" for index in range(total)]
    started = time.monotonic()
    held = _lock_free_slots(files, count)
    if held is None:
        log.info("waiting for %d free GPU(s) of %d (locks in %s); --resources gpu=%d keeps Snakemake from "
                 "starting more GPU jobs than there are GPUs", count, total, folder, total)
    while held is None:
        if timeout is not None and time.monotonic() - started > timeout:
            raise TimeoutError(f"no {count} free GPU(s) of {total} after {timeout:.0f} s: other jobs hold the locks "
                               f"in {folder}; run with --resources gpu={total} so that Snakemake does not start more")
        time.sleep(1.0)
        held = _lock_free_slots(files, count)
    slots = [index for index, _ in held]
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, slots))
    try:
        yield slots
    finally:
        del os.environ["CUDA_VISIBLE_DEVICES"]
        for _, handle in held:
            handle.close()
