"""Checkpoints: the state a training run resumes from, and how any checkpoint is read back.

``evaluate`` and ``predict`` read checkpoints through ``load_checkpoint`` without importing the
trainer. ``TrainState`` is what changes as training goes: where it is, the best epoch so far,
the history of epoch rows, and the part of an epoch that an interruption cut short.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cocoseg.io import atomic_path


@dataclass
class Best:
    """The epoch with the best validation mIoU so far (1-based; -1: none yet)."""

    miou: float = -1.0
    epoch: int = -1


@dataclass
class PartialEpoch:
    """An epoch interrupted part way: its loss sum, steps and seconds so far, for its row."""

    loss: float = 0.0
    steps: int = 0
    seconds: float = 0.0


@dataclass
class TrainState:
    epoch: int = 0  # epochs done
    step: int = 0  # steps done in the current epoch
    elapsed: float = 0.0  # wall seconds, interruptions excluded
    best: Best = field(default_factory=Best)
    history: list[dict[str, Any]] = field(default_factory=list)
    partial: PartialEpoch = field(default_factory=PartialEpoch)

    def state_dict(self) -> dict[str, Any]:
        """Plain types (``best`` and ``partial`` as dicts), as torch.load(weights_only=True) reads them."""
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.step, self.elapsed = state["epoch"], state["step"], state["elapsed"]
        self.best, self.partial = Best(**state["best"]), PartialEpoch(**state["partial"])
        self.history = state["history"]


def rng_state() -> dict[str, Any]:
    """Every RNG the loop draws from, in types that torch.load(weights_only=True) accepts."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [name, keys.tolist(), position, has_gauss, gauss],
            "python": random.getstate(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, gauss))
    random.setstate(state["python"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, **state: Any) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint, every tensor on the CPU, whatever device it was saved from or will be used on.

    ``load_state_dict`` copies weights and optimizer state to their parameters' device, and the
    saved RNG states must stay CPU ByteTensors: ``torch.set_rng_state`` and
    ``torch.cuda.set_rng_state_all`` refuse them anywhere else.
    """
    return torch.load(path, map_location="cpu", weights_only=True)
