"""Training one variant: model selection on the validation split, resumable checkpoints.

Training reads the cache (``cocoseg.cache``). Each epoch ends with a validation pass on the
cached val split (a confusion matrix at the training size), a row of ``checkpoints/metrics.csv``,
and ``last.pt``; the epoch with the best validation mIoU is also ``best.pt``. The declared outputs
(``best.pt``, ``metrics.csv``, ``training.json``) are written only when training completes. A run
that finds ``last.pt`` resumes from it. SIGTERM (a scheduler's pre-emption) saves ``last.pt`` at the next
step and exits with status 143, so a retry resumes.

The step never waits for the GPU: losses, the finite-loss check and confusion matrices stay on
the device and are read every ``CHECK_EVERY`` steps and once an epoch. Under
``torch.distributed`` (torchrun, or ``train_distributed``) each rank takes its share of the
sampler's epoch order and of the per-step batch, gradients are averaged by
DistributedDataParallel, validation confusion matrices are summed over ranks, and rank 0 writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import math
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from tqdm import tqdm

from cocoseg.batches import Batch, DeviceBatches, LoaderBatches, as_tensors, eval_batches, train_batches
from cocoseg.cache import CachedSplit, ensure_cache, load_split, manifest_sha256
from cocoseg.checkpoint import (
    Best,
    PartialEpoch,
    TrainState,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from cocoseg.data.split import split_rows
from cocoseg.device import (
    MEMORY_FORMAT,
    autocast,
    precision_name,
    resolve_precision,
    select_device,
    to_channels_last,
    use_threads,
)
from cocoseg.io import atomic_path, link_or_copy, write_csv
from cocoseg.lifecycle import (
    CHECK_EVERY,
    Ranks,
    StopRequest,
    TrainingInterrupted,
    all_reduce,
    current_ranks,
    launch,
    preemptible,
    process_threads,
)
from cocoseg.losses import build_loss, class_weights
from cocoseg.metrics import ConfusionMatrix, metrics_from_confusion
from cocoseg.models import build_model, forward_logits
from cocoseg.paths import RunPaths
from cocoseg.sampling import SAMPLINGS, RepeatFactorSampler, repeat_factors
from cocoseg.settings import EXECUTION_SETTINGS, TrainSettings, scaled_lr

log = logging.getLogger(__name__)

TIMING_COLUMNS = ("seconds", "images_per_s")


def epoch_size(settings: TrainSettings, train_images: int) -> int | None:
    """Samples per epoch: with the ``steps`` budget, the train split's size whatever the sampling.

    So every sampling of a backbone takes the optimizer steps uniform sampling takes in
    ``epochs`` epochs; with ``epochs``, an oversampled epoch is its whole repeat-factor draw.
    """
    if settings.budget == "steps":
        return train_images
    if settings.budget == "epochs":
        return None
    raise ValueError(f"unknown train.budget {settings.budget!r}; use steps or epochs")


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


def run_fingerprint(settings: TrainSettings, manifest_path: str | Path, classes: list[str],
                    precision: str) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the settings that shape the result, the resolved precision
    (``bf16`` or ``fp32``), and the data."""
    computed = {k: v for k, v in dataclasses.asdict(settings).items() if k not in EXECUTION_SETTINGS}
    return {"settings": computed, "precision": precision, "manifest_sha256": manifest_sha256(manifest_path),
            "classes": list(classes)}


def validate(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, num_classes: int, batch_size: int,
             device: torch.device, precision: torch.dtype | None, loss_fn: torch.nn.Module | None = None,
             ranks: Ranks = Ranks()) -> dict[str, Any]:
    """Metrics of the cached val split (at the training size), summed over ranks; one read at the end."""
    model.eval()
    confusion = ConfusionMatrix(num_classes, device)
    loss_sum, count = torch.zeros((), device=device), torch.zeros((), device=device)
    with torch.inference_mode(), autocast(device, precision):
        for batch_images, batch_masks in eval_batches(images, masks, batch_size, device, ranks.rank, ranks.world_size):
            logits, _ = forward_logits(model, to_channels_last(batch_images))
            confusion.update(logits.argmax(1), batch_masks)
            if loss_fn is not None:
                loss_sum += loss_fn(logits.float(), batch_masks) * len(batch_masks)
            count += len(batch_masks)
    all_reduce(confusion.matrix, ranks)
    all_reduce(loss_sum, ranks)
    all_reduce(count, ranks)
    result = metrics_from_confusion(confusion.numpy())
    result["confusion"] = confusion.numpy()
    result["loss"] = float(loss_sum / count.clamp(min=1))
    return result


def recalibrate_batch_norm(model: torch.nn.Module, batches: Iterable[Batch], count: int, device: torch.device,
                           precision: torch.dtype | None) -> None:
    """Recompute batch-norm running statistics as plain averages over ``count`` training batches.

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
    with torch.no_grad(), autocast(device, precision):
        for images, _ in itertools.islice(batches, count):
            model(to_channels_last(images))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum


def _sampling_factors(train_rows: pd.DataFrame, classes: list[str], settings: TrainSettings) -> np.ndarray:
    if settings.sampling == "uniform":
        return np.ones(len(train_rows))
    if settings.sampling == "oversample":
        presence = (train_rows[[f"pixels_{c}" for c in classes]] > 0).to_numpy()
        return repeat_factors(presence, settings.repeat_threshold)
    raise ValueError(f"unknown sampling {settings.sampling!r}; use one of {', '.join(SAMPLINGS)}")


def _loss(train_rows: pd.DataFrame, classes: list[str], settings: TrainSettings, out_dir: Path | None,
          device: torch.device) -> torch.nn.Module:
    """The variant's loss; the class weights of a weighted loss are written to ``out_dir`` (rank 0 passes it)."""
    weights = None
    if settings.loss == "weighted_cross_entropy":
        image_pixels = train_rows[[f"pixels_{c}" for c in ("background", *classes)]].to_numpy()
        counts = image_pixels.sum(axis=0)
        values = class_weights(image_pixels, settings.class_weights)
        if out_dir is not None:
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


def train_step(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, loss_fn: torch.nn.Module,
               optimizer: torch.optim.Optimizer, aux_weight: float, device: torch.device,
               precision: torch.dtype | None) -> torch.Tensor:
    """One optimizer step (autocast to ``precision``, loss in fp32); returns the detached loss, still on the
    device (nothing here waits for the GPU)."""
    with autocast(device, precision):
        logits, aux = forward_logits(model, to_channels_last(images))
        loss = loss_fn(logits.float(), masks)
        if aux is not None:
            loss = loss + aux_weight * loss_fn(aux.float(), masks)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


class NonFiniteLoss:
    """The first step of an epoch whose loss was not finite, recorded on the device and read now and then."""

    def __init__(self, device: torch.device) -> None:
        self.step = torch.zeros((), dtype=torch.int64, device=device)  # 1-based; 0: none yet
        self.value = torch.zeros((), device=device)

    def record(self, loss: torch.Tensor, step: int) -> None:
        first = ~torch.isfinite(loss) & (self.step == 0)
        self.step = torch.where(first, step + 1, self.step)
        self.value = torch.where(first, loss.float(), self.value)

    def first(self, ranks: Ranks) -> tuple[int, float]:
        """(1-based step, loss) of the first non-finite loss on any rank, or (0, 0.0); a host read."""
        step = all_reduce(self.step.clone(), ranks, "max")
        return int(step), float(self.value)


def _epoch_row(epoch: int, lr: float, train_loss: float, val: dict[str, Any], classes: list[str], steps: int,
               batch_size: int, seconds: float) -> dict[str, Any]:
    seen = steps * batch_size  # whole batches only: the sampler's tail that fills no batch is dropped
    return {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "val_loss": val["loss"], "val_miou": val["miou"],
            "val_pixel_accuracy": val["pixel_accuracy"],
            **{f"val_iou_{name}": v for name, v in zip(("background", *classes), val["iou"])},
            "steps": steps, "images": seen, "seconds": seconds, "images_per_s": seen / max(seconds, 1e-9)}


@dataclass
class Training:
    """What one run trains with, set up once: data, model, optimizer, loss, and where it writes."""

    settings: TrainSettings
    classes: list[str]
    variant: str
    run_name: str
    out_dir: Path
    ranks: Ranks
    device: torch.device
    precision: torch.dtype | None
    train_rows: pd.DataFrame
    model: torch.nn.Module
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    batches: LoaderBatches | DeviceBatches
    val_images: torch.Tensor
    val_masks: torch.Tensor
    fingerprint: dict[str, Any]

    @property
    def last_path(self) -> Path:
        return self.out_dir / "checkpoints" / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out_dir / "checkpoints" / "best.pt"

    @property
    def rank_batch_size(self) -> int:
        return self.settings.batch_size // self.ranks.world_size


def _load_cache(manifest_path: Path, run_dir: Path, cache_dir: Path, size: int, threads: int | None,
                ranks: Ranks) -> tuple[pd.DataFrame, CachedSplit, CachedSplit]:
    """The train split's manifest rows and the cached train and val splits (rank 0 builds a missing cache)."""
    if ranks.main:
        ensure_cache(manifest_path, run_dir, cache_dir, size, threads or 1)
    if ranks.world_size > 1:
        dist.barrier()
    train_rows = split_rows(pd.read_csv(manifest_path), "train")
    train_split = load_split(cache_dir, "train", manifest_path, size)
    if list(train_rows["image_id"]) != train_split.image_ids:
        raise RuntimeError(f"{cache_dir} does not hold the train split of {manifest_path} in order; delete it")
    return train_rows, train_split, load_split(cache_dir, "val", manifest_path, size)


def _build_model(settings: TrainSettings, num_classes: int, ranks: Ranks, device: torch.device) -> torch.nn.Module:
    model = build_model(settings.backbone, num_classes, settings.weights_backbone, settings.aux_loss,
                        settings.bn_momentum)
    if ranks.world_size > 1 and device.type == "cuda":
        # Batch statistics over the whole batch, as on one GPU (gloo on the CPU has no SyncBatchNorm).
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return to_channels_last(model.to(device))


def set_up(manifest_path: Path, run_dir: Path, out_dir: Path, classes: list[str], settings: TrainSettings,
           variant: str, run_name: str, threads: int | None, cache_dir: Path) -> Training:
    """Seeds, device, data, model, loss, optimizer and batches of one run (this rank's share of it)."""
    ranks = current_ranks()
    device = select_device(settings.device, ranks.rank)
    precision = resolve_precision(settings.precision, device)
    if settings.batch_size % ranks.world_size:
        raise ValueError(f"train.batch_size {settings.batch_size} does not divide among "
                         f"{ranks.world_size} processes; make it a multiple of the GPU count")
    torch.manual_seed(settings.seed)
    np.random.seed(settings.seed)
    random.seed(settings.seed)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True

    train_rows, train_split, val_split = _load_cache(manifest_path, run_dir, cache_dir, settings.image_size,
                                                     threads, ranks)
    model = _build_model(settings, len(classes) + 1, ranks, device)
    loss_fn = _loss(train_rows, classes, settings, out_dir if ranks.main else None, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=scaled_lr(settings), weight_decay=settings.weight_decay,
                                 fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(epoch, settings))
    sampler = RepeatFactorSampler(_sampling_factors(train_rows, classes, settings), seed=settings.seed,
                                  num_replicas=ranks.world_size, rank=ranks.rank,
                                  epoch_size=epoch_size(settings, len(train_rows)))
    batches = train_batches(train_split, sampler, settings.batch_size // ranks.world_size, settings.hflip,
                            settings.vflip, settings.rotate, settings.seed, settings.num_workers, device,
                            settings.data_on_device, val_split)
    on_device = isinstance(batches, DeviceBatches)
    val_images, val_masks = as_tensors(val_split, device if on_device else "cpu")
    log.info("%s: %d train images on %s (%s data path, %s, %s), %d process(es), batch %d, lr %.3g", variant,
             len(train_rows), device, "device" if on_device else "DataLoader", precision_name(precision),
             MEMORY_FORMAT, ranks.world_size, settings.batch_size, scaled_lr(settings))
    fingerprint = run_fingerprint(settings, manifest_path, classes, precision_name(precision))
    return Training(settings, classes, variant, run_name, out_dir, ranks, device, precision, train_rows, model,
                    loss_fn, optimizer, scheduler, batches, val_images, val_masks, fingerprint)


def resume(training: Training, state: TrainState) -> None:
    """Continue from ``last.pt`` when it was made with the same settings and data."""
    saved = load_checkpoint(training.last_path) if training.last_path.exists() else None
    if saved is not None and saved.get("fingerprint") != training.fingerprint:
        log.warning("%s was made with other settings or data: starting afresh", training.last_path)
        saved = None
    if saved is None:
        return
    training.model.load_state_dict(saved["model"])
    training.optimizer.load_state_dict(saved["optimizer"])
    training.scheduler.load_state_dict(saved["scheduler"])
    state.load_state_dict(saved)
    set_rng_state(saved["rng"])
    log.info("resuming %s from %s: epoch %d, step %d", training.variant, training.last_path, state.epoch + 1,
             state.step)


def save_last(training: Training, state: TrainState) -> None:
    if training.ranks.main:
        save_checkpoint(training.last_path, model=training.model.state_dict(),
                        optimizer=training.optimizer.state_dict(), scheduler=training.scheduler.state_dict(),
                        **state.state_dict(), rng=rng_state(), fingerprint=training.fingerprint,
                        settings=dataclasses.asdict(training.settings), classes=training.classes,
                        variant=training.variant)


def _raise_if_nonfinite(training: Training, state: TrainState, nonfinite: NonFiniteLoss) -> None:
    step, value = nonfinite.first(training.ranks)
    if step:
        size = training.rank_batch_size
        indices = training.batches.sampler.epoch_indices()[(step - 1) * size : step * size]
        raise FloatingPointError(
            f"{training.variant}: loss is {value} at epoch {state.epoch + 1}, step {step}; lower train.lr "
            f"(now {scaled_lr(training.settings)}) or check the data of that step's images "
            f"{training.train_rows['image_id'].iloc[indices].tolist()}")


def train_one_epoch(training: Training, state: TrainState, model: torch.nn.Module, stop: StopRequest,
                    batches: Iterator[Batch]) -> tuple[float, int]:
    """The current epoch from ``state.step`` on (``batches``); returns its mean train loss and optimizer steps.

    On a stop request ``state`` records where the epoch stands, and ``TrainingInterrupted`` is raised.
    """
    s, device = training.settings, training.device
    model.train()
    loss_sum = torch.full((), state.partial.loss, device=device)
    steps = state.partial.steps
    nonfinite = NonFiniteLoss(device)
    total = training.batches.steps(state.epoch) - state.step
    bar = tqdm(batches, total=total, disable=not training.ranks.main,
               desc=f"{training.variant} epoch {state.epoch + 1}/{s.epochs}", unit="batch", mininterval=2)
    for step, (images, masks) in enumerate(bar, start=state.step):
        if stop.seen(step, training.ranks, device):
            _raise_if_nonfinite(training, state, nonfinite)
            state.step = step
            state.partial = PartialEpoch(float(loss_sum), steps, state.partial.seconds)
            raise TrainingInterrupted()
        loss = train_step(model, images, masks, training.loss_fn, training.optimizer, s.aux_weight, device,
                          training.precision)
        nonfinite.record(loss, step)
        loss_sum += loss
        steps += 1
        if (step + 1) % CHECK_EVERY == 0:
            _raise_if_nonfinite(training, state, nonfinite)
    _raise_if_nonfinite(training, state, nonfinite)
    mean_loss = float(all_reduce(loss_sum, training.ranks)) / max(1, steps * training.ranks.world_size)
    return mean_loss, steps


def _sync_buffers(training: Training) -> None:
    """Rank 0's batch-norm statistics everywhere (plain BatchNorm keeps them per rank)."""
    if training.ranks.world_size > 1:
        for buffer in training.model.buffers():
            dist.broadcast(buffer, 0)


def end_epoch(training: Training, state: TrainState, train_loss: float, steps: int, train_seconds: float,
              started: float, wandb_run: Any) -> None:
    """Validation, the epoch's row, best.pt when it is the best so far, and last.pt."""
    s = training.settings
    if s.bn_recalibration:
        recalibrate_batch_norm(training.model, training.batches.epoch(state.epoch), s.bn_recalibration,
                               training.device, training.precision)
    _sync_buffers(training)
    val = validate(training.model, training.val_images, training.val_masks, len(training.classes) + 1,
                   s.eval_batch_size, training.device, training.precision, training.loss_fn, training.ranks)
    state.elapsed += time.perf_counter() - started
    row = _epoch_row(state.epoch, training.optimizer.param_groups[0]["lr"], train_loss, val, training.classes,
                     steps, s.batch_size, train_seconds)
    state.history.append(row)
    training.scheduler.step()
    if val["miou"] > state.best.miou:
        state.best = Best(val["miou"], state.epoch + 1)
        if training.ranks.main:
            save_checkpoint(training.best_path, model=training.model.state_dict(), epoch=state.epoch + 1,
                            val_miou=val["miou"], settings=dataclasses.asdict(s), classes=training.classes,
                            variant=training.variant)
    state.epoch, state.step = state.epoch + 1, 0
    save_last(training, state)
    if training.ranks.main:
        # Progress to watch; the declared metrics.csv appears only in finish(), so that an output
        # Snakemake tracks never exists for an unfinished job (see README: after a crash).
        write_csv(pd.DataFrame(state.history), training.last_path.parent / "metrics.csv")
    log.info("%s epoch %d: train loss %.4f, val loss %.4f, val mIoU %.4f (best %.4f at epoch %d)", training.variant,
             state.epoch, row["train_loss"], row["val_loss"], row["val_miou"], state.best.miou,
             state.best.epoch)
    if wandb_run is not None:
        wandb_run.log(row, step=state.epoch)


def _check_ranks_agree(training: Training) -> None:
    """Every rank ends with the same weights, or DistributedDataParallel did not do its work."""
    if training.ranks.world_size == 1:
        return
    checksum = torch.stack([p.detach().double().sum() for p in training.model.parameters()]).sum()
    extremes = torch.stack([checksum, -checksum])
    all_reduce(extremes, training.ranks, "max")
    if float(extremes[0]) != -float(extremes[1]):
        raise RuntimeError(f"{training.variant}: the ranks' weights differ at the end of training")


def _wrapped_model(training: Training) -> torch.nn.Module:
    """The model the steps run: under DistributedDataParallel with several ranks, compiled when asked."""
    model = training.model
    if training.ranks.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[training.device] if training.device.type == "cuda" else None)
    if training.settings.compile:
        model = torch.compile(model)
    return model


def run_epochs(training: Training, state: TrainState, stop: StopRequest) -> None:
    """Epochs from where ``state`` stands to the last; a ``stop`` request saves last.pt and raises
    ``TrainingInterrupted``."""
    model = _wrapped_model(training)
    wandb_run = (_start_wandb(training.settings, training.run_name, training.variant, training.out_dir)
                 if training.ranks.main else None)
    try:
        while state.epoch < training.settings.epochs:
            started = time.perf_counter()
            # Closed when the epoch ends or is interrupted (after last.pt is saved): its loader workers end then,
            # not when the traceback is freed (a spawned rank's exit waits for them before any atexit handler).
            with contextlib.closing(training.batches.epoch(state.epoch, state.step)) as batches:
                try:
                    train_loss, steps = train_one_epoch(training, state, model, stop, batches)
                except TrainingInterrupted:
                    state.elapsed += time.perf_counter() - started
                    state.partial.seconds += time.perf_counter() - started
                    save_last(training, state)
                    log.warning("SIGTERM: saved %s at epoch %d step %d; exiting", training.last_path,
                                state.epoch + 1, state.step)
                    raise
            if training.device.type == "cuda":
                torch.cuda.synchronize(training.device)
            train_seconds = time.perf_counter() - started + state.partial.seconds
            state.partial = PartialEpoch()
            end_epoch(training, state, train_loss, steps, train_seconds, started, wandb_run)
    finally:
        if wandb_run is not None:
            wandb_run.finish()


def finish(training: Training, state: TrainState) -> dict[str, Any]:
    """training.json, the final metrics.csv, and best.pt published from checkpoints/ (a hard link)."""
    settings, frame = training.settings, pd.DataFrame(state.history)
    summary = {"variant": training.variant, "best_epoch": state.best.epoch, "best_val_miou": state.best.miou,
               "seed": settings.seed, "epochs": settings.epochs, "budget": settings.budget,
               "steps": int(frame["steps"].sum()), "images": int(frame["images"].sum()),
               "train_seconds": float(frame["seconds"].sum()),
               "images_per_s": float(frame["images"].sum() / frame["seconds"].sum()),
               "wall_seconds": state.elapsed, "device": str(training.device),
               "world_size": training.ranks.world_size,
               "sync_batch_norm": any(isinstance(m, torch.nn.SyncBatchNorm) for m in training.model.modules()),
               "precision": precision_name(training.precision),
               "memory_format": MEMORY_FORMAT,
               "data_path": "device" if isinstance(training.batches, DeviceBatches) else "DataLoader",
               "lr": scaled_lr(settings), "settings": dataclasses.asdict(settings)}
    with atomic_path(training.out_dir / "training.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    write_csv(frame, training.out_dir / "metrics.csv")
    link_or_copy(training.best_path, training.out_dir / "best.pt")
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
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Train one variant; write best.pt, metrics.csv, training.json and checkpoints/ under ``out_dir``.

    ``cache_dir`` defaults to ``run_dir/cache/<image_size>px``, built there when missing or stale.
    Under an initialised process group (torchrun), this process is one rank of the run.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    use_threads(process_threads(threads))
    cache = Path(cache_dir or RunPaths(str(run_dir)).cache_dir(settings.image_size))
    with preemptible() as stop:  # from the start: a SIGTERM during set-up is seen at the first step
        training = set_up(Path(manifest_path), run_dir, out_dir, classes, settings, variant, run_name, threads,
                          cache)
        state = TrainState()
        resume(training, state)
        run_epochs(training, state, stop)
    _check_ranks_agree(training)
    return finish(training, state) if training.ranks.main else {}


def train_distributed(world_size: int, *args: Any, backend: str | None = None, log_file: str | Path | None = None,
                      **kwargs: Any) -> None:
    """``train`` in ``world_size`` processes on this machine (one per GPU; gloo on the CPU).

    The same as ``torchrun --nproc-per-node world_size``, for callers that are one Python process
    already (a Snakemake job). Each rank appends to ``log_file``. A failure in any rank ends them
    all; SIGTERM is passed on to the ranks, which save ``last.pt`` and exit 143 (``TrainingInterrupted``).
    """
    launch(world_size, train, args, kwargs, backend, str(log_file) if log_file else None)
