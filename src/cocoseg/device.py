"""How models run on a device: numeric precision, memory format, threads. One home for each idiom.

``train.precision`` (``auto``, ``bf16``, ``fp32``) is resolved per device at run time: ``auto`` is
bf16 autocast on CUDA and on CPUs that do bf16 matrix products in hardware (AVX512-BF16 or
AMX-BF16), else fp32. Models and their inputs are channels_last on every device: oneDNN's CPU
convolutions and cuDNN's tensor-core kernels both prefer it, and argmax over the class axis of
channels_last logits reads contiguous memory.
"""

from __future__ import annotations

import functools
import os
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TypeVar

import torch

PRECISIONS = ("auto", "bf16", "fp32")
MEMORY_FORMAT = "channels_last"
_NAMES = {torch.bfloat16: "bf16", None: "fp32"}
# x86 CPU flags of native bf16 dot products; without them oneDNN emulates bf16, slower than fp32.
_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})

T = TypeVar("T", torch.Tensor, torch.nn.Module)


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
