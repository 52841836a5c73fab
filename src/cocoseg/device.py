"""How models run on a device: numeric precision, memory format, threads. One home for each idiom.

``train.precision`` (``auto``, ``bf16``, ``fp32``) is resolved per device at run time: ``auto`` is
bf16 autocast on CUDA and on CPUs that do bf16 matrix products in hardware (AVX512-BF16 or
AMX-BF16), else fp32. Models and their inputs are channels_last on every device: oneDNN's CPU
convolutions and cuDNN's tensor-core kernels both prefer it, and argmax over the class axis of
channels_last logits reads contiguous memory.
"""

from __future__ import annotations

import atexit
import functools
import multiprocessing
import os
import signal
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TypeVar

import torch

PRECISIONS = ("auto", "bf16", "fp32")
MEMORY_FORMAT = "channels_last"
_NAMES = {torch.bfloat16: "bf16", None: "fp32"}
# x86 CPU flags of native bf16 dot products; without them oneDNN emulates bf16, slower than fp32.
_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})

T = TypeVar("T", torch.Tensor, torch.nn.Module)
Item = TypeVar("Item")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (empty elsewhere)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


@functools.cache
def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX on this CPU: torch's own probes, else the flags in /proc/cpuinfo.

    (``torch.backends.cpu.get_cpu_capability()`` says ``AVX512`` with or without bf16, so it cannot tell.)
    """
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(probe is not None for probe in probes):
        return any(probe() for probe in probes if probe is not None)
    return bool(cpu_flags() & _BF16_FLAGS)


def select_device(name: str = "auto", rank: int = 0) -> torch.device:
    """``auto``: CUDA when there is one (each local rank its own GPU, from ``LOCAL_RANK``), else the CPU."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(name)


def resolve_precision(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``setting`` on ``device``; None is plain fp32."""
    if setting not in PRECISIONS:
        raise ValueError(f"unknown train.precision {setting!r}; use one of {', '.join(PRECISIONS)}")
    if setting == "auto":
        native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
        return torch.bfloat16 if native else None
    return torch.bfloat16 if setting == "bf16" else None


def precision_name(dtype: torch.dtype | None) -> str:
    return _NAMES[dtype]


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """Autocast to ``dtype`` on ``device``, or nothing (fp32) when it is None."""
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def to_channels_last(value: T) -> T:
    """A model's weights or a 4-d batch in channels_last (a no-op when it already is)."""
    if isinstance(value, torch.nn.Module):
        return value.to(memory_format=torch.channels_last)
    return value.contiguous(memory_format=torch.channels_last)


def use_threads(threads: int | None) -> None:
    """The job's cores for torch's intra-op pool and OpenCV's (None: leave the defaults)."""
    if threads:
        import cv2

        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)


WORKER_EXIT_GRACE_S = 2.0  # how long a process waits at exit for loader workers (torch's shutdown waited already)


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
