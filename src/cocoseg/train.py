"""Training one variant: model selection on the validation split, resumable checkpoints.

Each epoch ends with a validation pass (confusion matrix at the masks' own resolution),
a row of ``metrics.csv``, and ``last.pt``; the epoch with the best validation mIoU is also
``best.pt``. A run that finds ``last.pt`` resumes from it. SIGTERM (a scheduler's pre-emption)
saves ``last.pt`` at the next step and exits with status 143, so a retry resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import math
import random
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from cocoseg.datasets import SegmentationDataset, collate_eval, eval_transform, seed_worker, train_transform
from cocoseg.io import atomic_path, write_csv
from cocoseg.losses import build_loss, class_weights
from cocoseg.metrics import ConfusionMatrix, metrics_from_confusion
from cocoseg.models import build_model, forward_logits
from cocoseg.sampling import RepeatFactorSampler, repeat_factors

log = logging.getLogger(__name__)

TIMING_COLUMNS = ("seconds", "images_per_s")
# Settings that change how a run is executed, not what it computes: a checkpoint resumes across them.
EXECUTION_SETTINGS = ("num_workers", "eval_batch_size", "device", "wandb_mode", "wandb_project")


class TrainingInterrupted(SystemExit):
    """SIGTERM arrived: last.pt was saved; exit status 143 tells the scheduler to retry."""

    def __init__(self) -> None:
        super().__init__(143)


@dataclass
class TrainSettings:
    backbone: str
    loss: str
    sampling: str
    image_size: int = 256
    epochs: int = 30
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 0.0
    scheduler: str = "none"  # none | cosine | poly
    warmup_epochs: int = 0
    hflip: float = 0.5
    vflip: float = 0.5
    rotate: float = 15.0
    weights_backbone: str = "none"
    aux_loss: bool = False
    aux_weight: float = 0.4
    bn_momentum: float | None = None
    bn_recalibration: int = 0
    class_weights: str = "inverse_sqrt"
    repeat_threshold: float = 0.3
    focal_tversky: dict[str, float] = field(default_factory=lambda: {"alpha": 0.3, "beta": 0.7, "gamma": 0.75})
    eval_batch_size: int = 8
    num_workers: int = 2
    seed: int = 0
    device: str = "auto"
    wandb_mode: str = "offline"
    wandb_project: str = "cocoseg"


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def lr_factor(epoch: int, settings: TrainSettings) -> float:
    """Linear warm-up, then constant, cosine or poly(0.9) decay; applied per epoch."""
    if epoch < settings.warmup_epochs:
        return (epoch + 1) / (settings.warmup_epochs + 1)
    progress = (epoch - settings.warmup_epochs) / max(1, settings.epochs - settings.warmup_epochs)
    if settings.scheduler == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if settings.scheduler == "poly":
        return (1 - progress) ** 0.9
    return 1.0


def _rng_state() -> dict[str, Any]:
    """Every RNG the loop draws from, in types that torch.load(weights_only=True) accepts."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [name, keys.tolist(), position, has_gauss, gauss],
            "python": random.getstate(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, gauss))
    random.setstate(state["python"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def run_fingerprint(settings: TrainSettings, manifest_path: str | Path, classes: list[str]) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the settings that shape the result, and the data."""
    computed = {k: v for k, v in dataclasses.asdict(settings).items() if k not in EXECUTION_SETTINGS}
    digest = hashlib.sha256(Path(manifest_path).read_bytes()).hexdigest()
    return {"settings": computed, "manifest_sha256": digest, "classes": list(classes)}


def save_checkpoint(path: Path, **state: Any) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=device, weights_only=True)


def _prepare_batch(batch: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, Any]:
    images = batch["image"].to(device, non_blocking=True)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    masks = batch["mask"]
    if isinstance(masks, torch.Tensor):
        masks = masks.to(device, non_blocking=True)
    return images, masks


def evaluate_model(model: torch.nn.Module, loader: DataLoader, num_classes: int, device: torch.device,
                   loss_fn: torch.nn.Module | None = None,
                   on_prediction: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None) -> dict[str, Any]:
    """Confusion matrix (and mean loss) at each mask's own resolution: logits are upsampled bilinearly."""
    model.eval()
    confusion = ConfusionMatrix(num_classes, device)
    loss_sum = torch.zeros((), device=device)
    count = 0
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for batch in loader:
            images, masks = _prepare_batch(batch, device)
            logits, _ = forward_logits(model, images)
            for i, mask in enumerate(masks):
                mask = mask.to(device)
                upsampled = F.interpolate(logits[i : i + 1].float(), size=mask.shape, mode="bilinear",
                                          align_corners=False)
                prediction = upsampled.argmax(1)[0]
                confusion.update(prediction, mask)
                if loss_fn is not None:
                    loss_sum += loss_fn(upsampled, mask[None])
                if on_prediction is not None:
                    on_prediction(batch["image_id"][i], prediction, mask)
                count += 1
    result = metrics_from_confusion(confusion.numpy())
    result["confusion"] = confusion.numpy()
    result["loss"] = float(loss_sum) / max(count, 1)
    return result


def recalibrate_batch_norm(model: torch.nn.Module, loader: DataLoader, batches: int, device: torch.device) -> None:
    """Recompute batch-norm running statistics as plain averages over ``batches`` training batches.

    In a short run from scratch the weights move faster than the running averages follow, and a
    model that segments well with batch statistics predicts only background in eval mode. This is
    "precise BN" (Wu & Johnson 2021): statistics measured for the weights that will be evaluated.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
    model.train()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for batch in itertools.islice(loader, batches):
            model(_prepare_batch(batch, device)[0])
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum


def _eval_loader(rows: pd.DataFrame, run_dir: Path, settings: TrainSettings) -> DataLoader:
    dataset = SegmentationDataset(rows, run_dir, eval_transform(settings.image_size), train=False)
    return DataLoader(dataset, batch_size=settings.eval_batch_size, shuffle=False, drop_last=False,
                      num_workers=settings.num_workers, collate_fn=collate_eval,
                      persistent_workers=settings.num_workers > 0)


def _sampling_factors(train_rows: pd.DataFrame, classes: list[str], settings: TrainSettings) -> np.ndarray:
    if settings.sampling == "uniform":
        return np.ones(len(train_rows))
    if settings.sampling == "oversample":
        presence = (train_rows[[f"pixels_{c}" for c in classes]] > 0).to_numpy()
        return repeat_factors(presence, settings.repeat_threshold)
    raise ValueError(f"unknown sampling {settings.sampling!r}; use uniform or oversample")


def _loss(train_rows: pd.DataFrame, classes: list[str], settings: TrainSettings, out_dir: Path,
          device: torch.device) -> torch.nn.Module:
    weights = None
    if settings.loss == "weighted_cross_entropy":
        counts = train_rows[[f"pixels_{c}" for c in ("background", *classes)]].sum().to_numpy()
        values = class_weights(counts, settings.class_weights)
        write_csv(pd.DataFrame({"class": ["background", *classes], "train_pixels": counts, "weight": values}),
                  out_dir / "class_weights.csv")
        weights = torch.tensor(values, dtype=torch.float32)
    return build_loss(settings.loss, weights, **settings.focal_tversky).to(device)


def _start_wandb(settings: TrainSettings, run_name: str, variant: str, out_dir: Path) -> Any:
    if settings.wandb_mode == "disabled":
        return None
    import wandb

    return wandb.init(project=settings.wandb_project, name=f"{run_name}/{variant}", id=f"{run_name}-{variant}",
                      resume="allow", mode=settings.wandb_mode, dir=str(out_dir),
                      config=dataclasses.asdict(settings), reinit="finish_previous")


def _epoch_loader(train_set: SegmentationDataset, sampler: RepeatFactorSampler, settings: TrainSettings, epoch: int,
                  start_step: int, device: torch.device) -> DataLoader:
    """The epoch's seeded order and augmentation streams, from ``start_step`` on (a resumed epoch)."""
    sampler.set_epoch(epoch)
    train_set.transform.set_random_seed(settings.seed * 1000 + epoch)
    indices = sampler.epoch_indices()[start_step * settings.batch_size :]
    return DataLoader(train_set, batch_size=settings.batch_size, sampler=indices, drop_last=True,
                      num_workers=settings.num_workers, worker_init_fn=seed_worker,
                      generator=torch.Generator().manual_seed(settings.seed * 1000 + epoch),
                      pin_memory=device.type == "cuda")


def _train_step(model: torch.nn.Module, batch: dict[str, Any], loss_fn: torch.nn.Module,
                optimizer: torch.optim.Optimizer, settings: TrainSettings, device: torch.device,
                where: str) -> torch.Tensor:
    """One optimizer step; returns the detached loss. ``where`` names the step in a non-finite-loss error."""
    images, masks = _prepare_batch(batch, device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits, aux = forward_logits(model, images)
        loss = loss_fn(logits, masks)
        if aux is not None:
            loss = loss + settings.aux_weight * loss_fn(aux, masks)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{where.format(loss.item())}; lower train.lr (now {settings.lr}) "
                                 f"or check the data of this batch: {batch['image_id']}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def _epoch_row(epoch: int, lr: float, train_loss: float, val: dict[str, Any], classes: list[str], seen: int,
               seconds: float) -> dict[str, Any]:
    return {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "val_loss": val["loss"], "val_miou": val["miou"],
            "val_pixel_accuracy": val["pixel_accuracy"],
            **{f"val_iou_{name}": v for name, v in zip(("background", *classes), val["iou"])},
            "images": seen, "seconds": seconds, "images_per_s": seen / max(seconds, 1e-9)}


def _finish(out_dir: Path, history: list[dict[str, Any]], best: dict[str, Any], settings: TrainSettings,
            elapsed: float, device: torch.device, variant: str, best_path: Path) -> dict[str, Any]:
    """training.json, the final metrics.csv, and best.pt copied out of checkpoints/."""
    frame = pd.DataFrame(history)
    summary = {"variant": variant, "best_epoch": best["epoch"], "best_val_miou": best["miou"],
               "epochs": settings.epochs, "train_seconds": float(frame["seconds"].sum()),
               "images_per_s": float(frame["images"].sum() / frame["seconds"].sum()),
               "wall_seconds": elapsed, "device": str(device), "settings": dataclasses.asdict(settings)}
    with atomic_path(out_dir / "training.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    write_csv(frame, out_dir / "metrics.csv")
    with atomic_path(out_dir / "best.pt") as tmp:
        shutil.copyfile(best_path, tmp)
    return summary


def train(
    manifest_path: str | Path,
    run_dir: str | Path,
    out_dir: str | Path,
    classes: list[str],
    settings: TrainSettings,
    variant: str = "",
    run_name: str = "run",
    threads: int | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train one variant; write best.pt, metrics.csv, training.json and checkpoints/ under ``out_dir``."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    device = select_device(settings.device)
    torch.manual_seed(settings.seed)
    np.random.seed(settings.seed)
    random.seed(settings.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    manifest = pd.read_csv(manifest_path)
    train_rows = manifest[manifest["split"] == "train"].reset_index(drop=True)
    val_rows = manifest[manifest["split"] == "val"].reset_index(drop=True)
    num_classes = len(classes) + 1
    model = build_model(settings.backbone, num_classes, settings.weights_backbone, settings.aux_loss,
                        settings.bn_momentum).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    loss_fn = _loss(train_rows, classes, settings, out_dir, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay,
                                 fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(epoch, settings))
    scaler = torch.amp.GradScaler(device.type, enabled=False)  # bf16 needs no loss scaling; kept for the format
    transform = train_transform(settings.image_size, settings.hflip, settings.vflip, settings.rotate)
    train_set = SegmentationDataset(train_rows, run_dir, transform, train=True)
    sampler = RepeatFactorSampler(_sampling_factors(train_rows, classes, settings), seed=settings.seed)
    val_loader = _eval_loader(val_rows, run_dir, settings)

    start_epoch, start_step, best, history, elapsed = 0, 0, {"miou": -1.0, "epoch": -1}, [], 0.0
    # Snakemake deletes a failed job's declared outputs: the checkpoints live apart, and best.pt is
    # copied out only when training is complete.
    last_path, best_path = out_dir / "checkpoints" / "last.pt", out_dir / "checkpoints" / "best.pt"
    fingerprint = run_fingerprint(settings, manifest_path, classes)
    state = load_checkpoint(last_path, device) if last_path.exists() else None
    if state is not None and state.get("fingerprint") != fingerprint:
        log.warning("%s was made with other settings or data: starting afresh", last_path)
        state = None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, start_step = state["epoch"], state["step"]
        best, history, elapsed = state["best"], state["history"], state["elapsed"]
        _set_rng_state(state["rng"])
        log.info("resuming %s from %s: epoch %d, step %d", variant, last_path, start_epoch + 1, start_step)

    interrupted = {"flag": False}
    previous_handler = signal.signal(signal.SIGTERM, lambda *_: interrupted.update(flag=True))

    def checkpoint(epoch: int, step: int) -> None:
        save_checkpoint(last_path, model=model.state_dict(), optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(), scaler=scaler.state_dict(), epoch=epoch, step=step,
                        best=best, history=history, elapsed=elapsed, rng=_rng_state(), fingerprint=fingerprint,
                        settings=dataclasses.asdict(settings), classes=classes, variant=variant)

    wandb_run = _start_wandb(settings, run_name, variant, out_dir)
    try:
        for epoch in range(start_epoch, settings.epochs):
            loader = _epoch_loader(train_set, sampler, settings, epoch, start_step, device)
            model.train()
            started = time.perf_counter()
            loss_sum, seen = torch.zeros((), device=device), 0
            bar = tqdm(loader, desc=f"{variant} epoch {epoch + 1}/{settings.epochs}", unit="batch", mininterval=2)
            for step, batch in enumerate(bar, start=start_step):
                if interrupted["flag"]:
                    elapsed += time.perf_counter() - started
                    checkpoint(epoch, step)
                    log.warning("SIGTERM: saved %s at epoch %d step %d; exiting", last_path, epoch + 1, step)
                    raise TrainingInterrupted()
                loss_sum += _train_step(model, batch, loss_fn, optimizer, settings, device,
                                        f"{variant}: loss is {{}} at epoch {epoch + 1}, step {step + 1}")
                seen += len(batch["image"])
            start_step = 0
            if settings.bn_recalibration:
                recalibrate_batch_norm(model, loader, settings.bn_recalibration, device)
            train_seconds = time.perf_counter() - started
            val = evaluate_model(model, val_loader, num_classes, device, loss_fn)
            elapsed += time.perf_counter() - started
            train_loss = float(loss_sum) / max(1, seen // settings.batch_size)
            row = _epoch_row(epoch, optimizer.param_groups[0]["lr"], train_loss, val, classes, seen, train_seconds)
            history.append(row)
            scheduler.step()
            if val["miou"] > best["miou"]:
                best = {"miou": val["miou"], "epoch": epoch + 1}
                save_checkpoint(best_path, model=model.state_dict(), epoch=epoch + 1, val_miou=val["miou"],
                                settings=dataclasses.asdict(settings), classes=classes, variant=variant)
            checkpoint(epoch + 1, 0)
            write_csv(pd.DataFrame(history), out_dir / "metrics.csv")
            log.info("%s epoch %d: train loss %.4f, val loss %.4f, val mIoU %.4f (best %.4f at epoch %d)",
                     variant, epoch + 1, row["train_loss"], row["val_loss"], row["val_miou"], best["miou"],
                     best["epoch"])
            if wandb_run is not None:
                wandb_run.log(row, step=epoch + 1)
            if on_epoch_end is not None:
                on_epoch_end(epoch)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        if wandb_run is not None:
            wandb_run.finish()

    return _finish(out_dir, history, best, settings, elapsed, device, variant, best_path)
