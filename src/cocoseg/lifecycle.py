"""A training job's processes from start to exit: SIGTERM, ranks, DataLoader workers, and the job's GPUs.

One contract: a scheduler's SIGTERM (a pre-emption) ends the job with ``last.pt`` saved and exit
status 143, so that a retry resumes, however many processes the job has. The trainer calls
``preemptible()`` once (the handler, from set-up to the end of training) and asks the ``StopRequest``
it yields at every step; ``launch`` starts N ranks on this machine and ends as the ranks did;
``loader_workers`` and ``started_workers`` make DataLoader workers leave SIGTERM to their process
and never hang its exit; ``claimed_gpus`` gives a local job GPUs of its own. docs/architecture.md
("Process lifecycle") draws the whole sequence. Under torchrun, or ``launch``, every process is one
rank of a ``torch.distributed`` group; outside one, ``current_ranks`` is rank 0 of 1 and reductions
do nothing.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import logging
import multiprocessing
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from cocoseg.logs import configure as configure_logging

log = logging.getLogger(__name__)

Item = TypeVar("Item")

# Steps between reads of the device-side checks: with several ranks, whether any saw SIGTERM (they must
# stop at the same step), and a non-finite loss. Reading every step would make each step wait for the GPU.
CHECK_EVERY = 25
WORKER_EXIT_GRACE_S = 2.0  # how long a process waits at exit for loader workers (torch's shutdown waited already)


# --- SIGTERM in one process -------------------------------------------------------------------------------


class TrainingInterrupted(SystemExit):
    """SIGTERM arrived: last.pt was saved; exit status 143 tells the scheduler to retry."""

    def __init__(self) -> None:
        super().__init__(143)


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


class StopRequest:
    """SIGTERM seen in this process, or, read every CHECK_EVERY steps, on any rank."""

    def __init__(self) -> None:
        self.signalled = False

    def __call__(self, *_: Any) -> None:  # the signal handler
        self.signalled = True

    def seen(self, step: int, ranks: Ranks, device: torch.device) -> bool:
        if ranks.world_size == 1:
            return self.signalled
        if step % CHECK_EVERY:
            return False
        flag = torch.tensor(float(self.signalled), device=device)
        return bool(all_reduce(flag, ranks, "max"))


@contextlib.contextmanager
def preemptible() -> Iterator[StopRequest]:
    """SIGTERM becomes a ``StopRequest`` while the block runs; the previous handler is back afterwards.

    Entered before the cache and the model are set up: a SIGTERM then is seen at the first step
    (a rank that died of it would end the job with -15 instead of 143).
    """
    stop = StopRequest()
    previous_handler = signal.signal(signal.SIGTERM, stop)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


# --- N ranks on this machine ------------------------------------------------------------------------------


def process_threads(threads: int | None) -> int | None:
    """This process's share of the job's ``threads``: the job's processes on this machine (torchrun's
    ``LOCAL_WORLD_SIZE``, or ``launch``'s ranks) share its cores."""
    if not threads:
        return None
    return max(1, threads // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


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
            # A spawned process waits for its daemonic children before any atexit handler runs.
            kill_stuck_loader_workers()


def launch(world_size: int, target: Callable[..., Any], args: tuple, kwargs: dict, backend: str | None = None,
           log_file: str | None = None) -> None:
    """``target(*args, **kwargs)`` in ``world_size`` spawned ranks (NCCL with CUDA, else gloo), as torchrun would.

    Each rank appends to ``log_file``. SIGTERM is passed on to the ranks. A rank that fails ends
    them all: ``torch.multiprocessing.ProcessExitedException`` carries its exit code, except for a
    pre-emption, which raises ``TrainingInterrupted`` (exit 143): a rank exited 143, or one that the
    forwarded SIGTERM reached before its handler was installed died of it.
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
        while not context.join():
            pass
    except torch.multiprocessing.ProcessExitedException as failure:
        if failure.exit_code == 143 or (forwarded and failure.exit_code == -signal.SIGTERM):
            raise TrainingInterrupted() from None
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


# --- DataLoader workers -----------------------------------------------------------------------------------


def init_loader_worker(_: int) -> None:
    """DataLoader ``worker_init_fn``: SIGTERM left to the main process (workers start with it blocked, see
    ``started_workers``, so one that arrives while a worker starts is dropped here, not fatal).

    Slurm signals every process of a job: a worker that died of it would make the main process
    raise "DataLoader worker killed" instead of saving ``last.pt`` and exiting 143. The main
    process stops at its next step and shuts its workers down itself (and kills, at its exit,
    any that did not end: see ``reap_loader_workers_at_exit``).
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def loader_workers(num_workers: int) -> dict[str, Any]:
    """DataLoader arguments for ``num_workers`` workers that leave SIGTERM to this process and cannot hang its exit.

    Workers are forked where the platform can, whatever the process's start method (a spawned DDP
    rank's is spawn): they inherit the SIGTERM block of ``started_workers``, which a spawned worker
    does not. Each runs on one thread: torch sets its own pool so in every worker; OpenCV's is set
    here, for the workers to inherit (``cv2.setNumThreads`` in a forked worker deadlocks once this
    process's OpenCV pool has run).
    """
    if not num_workers:
        return {"num_workers": 0}
    import cv2

    cv2.setNumThreads(1)
    reap_loader_workers_at_exit()
    fork = "fork" in multiprocessing.get_all_start_methods()
    return {"num_workers": num_workers, "worker_init_fn": init_loader_worker,
            "multiprocessing_context": "fork" if fork else None}


def started_workers(loader: Iterable[Item]) -> Iterator[Item]:
    """``iter(loader)``, which starts its workers, with SIGTERM held back in this thread meanwhile.

    Forked workers inherit the block, so a SIGTERM sent to the whole job while they start cannot kill
    one before ``init_loader_worker`` runs: a worker killed so would make this process raise "DataLoader
    worker exited unexpectedly", or, were it spawned, block this process for good, writing the worker's
    start-up data into a pipe nobody reads. Held back here, the signal reaches this process's handler
    once the workers are up.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        return iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@functools.cache
def reap_loader_workers_at_exit() -> None:
    """At this process's exit, SIGKILL loader workers still alive after ``WORKER_EXIT_GRACE_S``.

    Workers ignore SIGTERM, and multiprocessing ends its daemonic children at exit with SIGTERM and
    then waits for them without a limit: one stuck worker would hang the job. Registered after
    multiprocessing's own exit handler, this one runs before it (a spawned rank, whose exit waits for
    its children before any atexit handler, calls ``kill_stuck_loader_workers`` itself).
    """
    atexit.register(kill_stuck_loader_workers)


def kill_stuck_loader_workers() -> None:
    """SIGKILL this process's loader workers (daemonic children) still alive after ``WORKER_EXIT_GRACE_S``."""
    deadline = time.monotonic() + WORKER_EXIT_GRACE_S
    for child in multiprocessing.active_children():
        if child.daemon:
            child.join(max(0.0, deadline - time.monotonic()))
            if child.is_alive():
                child.kill()


# --- Each local job's own GPUs ----------------------------------------------------------------------------


def machine_gpus() -> int:
    """NVIDIA GPUs the driver lists, without initialising CUDA (which would fix the visible devices too early)."""
    listing = Path("/proc/driver/nvidia/gpus")
    return len(list(listing.iterdir())) if listing.is_dir() else 0


def _lock_free_slots(files: list[Path], count: int) -> list[tuple[int, Any]] | None:
    """Exclusive locks on ``count`` of ``files``, or None (and nothing held) when fewer are free."""
    held = []
    for index, path in enumerate(files):
        handle = open(path, "a")  # noqa: SIM115 - held open past this function: the lock lives as long as the handle
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
            raise TimeoutError(f"no {count} free GPU(s) of {total} after {timeout:g} s: other jobs hold the locks "
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
