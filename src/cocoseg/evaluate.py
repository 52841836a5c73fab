"""Evaluation of a variant's selected checkpoint: test split once, validation for comparison.

Metrics are computed at each label mask's own resolution (logits upsampled bilinearly) from
one confusion matrix per split. Test predictions are written as palette PNGs for the figures,
with a per-image IoU table to find the worst images.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from cocoseg.checkpoint import load_checkpoint
from cocoseg.config import schema_default
from cocoseg.data.masks import palette, save_mask
from cocoseg.data.split import split_rows
from cocoseg.datasets import SegmentationDataset, collate_eval, eval_transform
from cocoseg.device import (
    MEMORY_FORMAT,
    autocast,
    precision_name,
    resolve_precision,
    select_device,
    to_channels_last,
    use_threads,
)
from cocoseg.io import atomic_path, publish_folder, work_folder, write_csv
from cocoseg.lifecycle import loader_workers
from cocoseg.metrics import ConfusionMatrix, metrics_from_confusion
from cocoseg.models import build_model, forward_logits
from cocoseg.settings import TrainSettings

log = logging.getLogger(__name__)


def _batch_images(batch: dict[str, Any], device: torch.device, contiguous: bool = False) -> torch.Tensor:
    """The batch's images on ``device``: channels_last for PyTorch's model, NCHW-contiguous where ``contiguous``
    (the exported model's runtimes, which would otherwise copy them back)."""
    images = batch["image"].to(device, non_blocking=True)
    return images.contiguous() if contiguous else to_channels_last(images)


def evaluate_model(model: torch.nn.Module, loader: DataLoader, num_classes: int, device: torch.device,
                   precision: torch.dtype | None,
                   on_prediction: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None) -> dict[str, Any]:
    """Confusion matrices at each mask's own resolution: logits are upsampled bilinearly.

    Besides the split's metrics, ``image_ids`` and ``per_image_confusion`` (N x C x C, int64, rows
    truth): each image's own matrix, whose sum is the split's. The model runs under autocast to
    ``precision``; upsampling and argmax are fp32. One image at a time: batching the images of
    one size into one interpolate call was measured no faster on the CPU (640x480 masks, 256 px
    channels_last logits: 4.5 ms an image alone, 5.2 in batches of 16).
    """
    model.eval()
    confusion = ConfusionMatrix(num_classes, device)
    per_image: list[torch.Tensor] = []
    image_ids: list[int] = []
    contiguous = getattr(model, "takes_contiguous", False)
    with torch.inference_mode(), autocast(device, precision):
        for batch in loader:
            logits, _ = forward_logits(model, _batch_images(batch, device, contiguous))
            for i, host_mask in enumerate(batch["mask"]):
                mask = host_mask.to(device)
                upsampled = F.interpolate(logits[i : i + 1].float(), size=mask.shape, mode="bilinear",
                                          align_corners=False)
                prediction = upsampled.argmax(1)[0]
                per_image.append(confusion.update(prediction, mask))
                image_ids.append(int(batch["image_id"][i]))
                if on_prediction is not None:
                    on_prediction(batch["image_id"][i], prediction, mask)
    result = metrics_from_confusion(confusion.numpy())
    result["confusion"] = confusion.numpy()
    result["image_ids"] = np.array(image_ids, dtype=np.int64)
    result["per_image_confusion"] = (torch.stack(per_image).view(-1, num_classes, num_classes).cpu().numpy()
                                     if per_image else np.zeros((0, num_classes, num_classes), dtype=np.int64))
    return result


def eval_loader(rows: pd.DataFrame, run_dir: Path, settings: TrainSettings) -> DataLoader:
    dataset = SegmentationDataset(rows, run_dir, eval_transform(settings.image_size))
    return DataLoader(dataset, batch_size=settings.eval_batch_size, shuffle=False, drop_last=False,
                      collate_fn=collate_eval, persistent_workers=settings.num_workers > 0,
                      **loader_workers(settings.num_workers))



ENGINES = ("pytorch", "onnxruntime", "openvino")


# How far an engine's logits may be from PyTorch fp32's on the first batch, relative to their scale
# (deployment.logit_limit): fp32 as the export's verification; bf16 rounds to 8 bits of mantissa (2^-8 = 0.004
# of each value, more after a network's worth of layers).
ENGINE_LOGIT_TOLERANCE = {"fp32": 1e-3, "bf16": 0.1}


def first_batch(manifest_path: str | Path, run_dir: str | Path, state: dict[str, Any], batch_size: int) -> torch.Tensor:
    """The images of the first batch evaluation reads (validation, else test), to check an engine on."""
    settings = TrainSettings(**{**state["settings"], "num_workers": 0, "eval_batch_size": batch_size})
    manifest = pd.read_csv(manifest_path)
    for split in ("val", "test"):
        rows = split_rows(manifest, split)
        if not rows.empty:
            return next(iter(eval_loader(rows, Path(run_dir), settings)))["image"].contiguous()
    raise ValueError(f"{manifest_path} has no validation or test images to evaluate; rerun the split")


def engine_model(checkpoint_path: str | Path, engine: str, folder: Path, threads: int | None,
                 probe: torch.Tensor | None = None) -> tuple[torch.nn.Module, dict[str, Any], str] | str:
    """The checkpoint exported to ONNX in ``folder`` and loaded by ``engine`` (CPU): the model, the checkpoint's
    state, and the precision the engine runs in (ONNX Runtime fp32; OpenVINO bf16 on CPUs with native bf16).

    The engine first runs ``probe`` (default: the first batch ``first_batch`` reads, when the caller passes it)
    and its logits are checked against PyTorch fp32's: beyond ``ENGINE_LOGIT_TOLERANCE`` raises
    ``VerificationFailed`` naming the engine, the metric and the difference. An engine that cannot load or
    run here returns the reason instead (a string), for the caller to fall back to PyTorch.
    """
    from cocoseg.deployment import VerificationFailed, logit_failure
    from cocoseg.export import fp32_model, write_onnx
    from cocoseg.runtimes import Unavailable, load_runtime

    reference, state = fp32_model(checkpoint_path)
    size = state["settings"]["image_size"]
    if probe is None:
        probe = torch.zeros(1, 3, size, size)
    write_onnx(reference, size, folder / "model.onnx")
    model = load_runtime(engine, folder / "model.onnx", threads, probe)
    if isinstance(model, Unavailable):
        return model.reason
    with torch.inference_mode():
        expected = reference(probe)["out"].float()
        difference = float((model(probe)["out"].float() - expected).abs().max())
    failure = logit_failure(f"evaluate.engine {engine} ({model.precision})", difference, float(expected.abs().max()),
                            ENGINE_LOGIT_TOLERANCE[model.precision], f"the first {len(probe)} evaluation images")
    if failure:
        raise VerificationFailed(f"{failure}; set evaluate.engine to pytorch")
    return model, state, model.precision


def load_model(checkpoint_path: str | Path, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    state = load_checkpoint(checkpoint_path)
    settings = TrainSettings(**state["settings"])
    model = build_model(settings.backbone, len(state["classes"]) + 1, "none", settings.aux_loss)
    model.load_state_dict(state["model"])
    return to_channels_last(model.to(device).eval()), state


def per_image_table(image_ids: np.ndarray, confusions: np.ndarray) -> pd.DataFrame:
    """Each image's mIoU over the classes present in its truth or prediction, by image id."""
    scores = [metrics_from_confusion(confusion)["miou"] for confusion in confusions]
    return pd.DataFrame({"image_id": image_ids, "miou": scores}).sort_values("image_id")


def _metrics_record(result: dict[str, Any], classes: list[str]) -> dict[str, Any]:
    names = ["background", *classes]
    record = {key: result[key] for key in ("miou", "miou_objects", "mean_dice", "pixel_accuracy",
                                           "mean_class_accuracy", "fw_iou", "pixels")}
    for key in ("iou", "dice", "precision", "recall"):
        record[key] = dict(zip(names, result[key]))
    return record


def _finite(value: Any) -> Any:
    """NaN (a class never seen nor predicted) becomes null, which JSON can hold."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def evaluate(
    checkpoint_path: str | Path,
    manifest_path: str | Path,
    run_dir: str | Path,
    out_dir: str | Path,
    num_workers: int = schema_default("train.num_workers"),
    batch_size: int = schema_default("evaluate.batch_size"),
    threads: int | None = None,
    device_name: str = schema_default("train.device"),
    precision: str | None = None,
    engine: str = schema_default("evaluate.engine"),
) -> dict[str, Any]:
    """Write metrics.json, confusion.csv (test), per_image.csv, per_image_confusion.npz and predictions/.

    ``precision`` (auto, bf16, fp32) defaults to the checkpoint's ``train.precision``. ``engine``
    (``evaluate.engine``) runs the network: PyTorch (on ``device_name``, in ``precision``), or the
    checkpoint exported to ONNX and run on the CPU by ONNX Runtime (fp32) or OpenVINO (bf16 where the
    CPU has native bf16), whatever ``device_name`` and ``precision`` say, once its logits on the first batch
    match PyTorch fp32's (``engine_model``). An engine that cannot load or run on this machine falls back to
    PyTorch with a logged reason; metrics.json's ``engine`` is the one that ran, ``engine_requested`` and
    ``engine_fallback`` (the reason, or null) say what was asked for.

    ``per_image_confusion.npz`` holds ``image_id`` and ``confusion`` (N x C x C, int64, rows truth)
    of the test split, and ``val_image_id`` and ``val_confusion`` of the validation split.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown evaluate.engine {engine!r}; use one of {', '.join(ENGINES)}")
    out_dir = Path(out_dir)
    use_threads(threads)
    from cocoseg.export import checked_checkpoint

    requested, fallback = engine, None
    with tempfile.TemporaryDirectory() as folder:
        loaded: tuple[torch.nn.Module, dict[str, Any], str] | str = "pytorch asked for"
        if engine != "pytorch":
            probe = first_batch(manifest_path, run_dir, load_checkpoint(checked_checkpoint(checkpoint_path)),
                                batch_size)
            loaded = engine_model(checkpoint_path, engine, Path(folder), threads, probe)
            if isinstance(loaded, str):
                log.warning("evaluate.engine %s cannot run here (%s): evaluating with PyTorch", engine, loaded)
                engine, fallback = "pytorch", f"{requested}: {loaded}"
        if isinstance(loaded, str):
            device = select_device(device_name)
            model, state = load_model(checkpoint_path, device)
            dtype = resolve_precision(precision or TrainSettings(**state["settings"]).precision, device)
            how = {"device": str(device), "precision": precision_name(dtype), "memory_format": MEMORY_FORMAT}
        else:
            device, dtype = torch.device("cpu"), None
            model, state, engine_precision = loaded
            how = {"device": "cpu", "precision": engine_precision, "memory_format": "contiguous"}
        return _evaluate(model, state, dtype, device, {"engine": engine, "engine_requested": requested,
                                                       "engine_fallback": fallback, **how},
                         manifest_path, run_dir, out_dir, num_workers, batch_size)


def _evaluate(model: torch.nn.Module, state: dict[str, Any], dtype: torch.dtype | None, device: torch.device,
              how: dict[str, Any], manifest_path: str | Path, run_dir: str | Path, out_dir: Path, num_workers: int,
              batch_size: int) -> dict[str, Any]:
    classes: list[str] = state["classes"]
    settings = TrainSettings(**{**state["settings"], "num_workers": num_workers, "eval_batch_size": batch_size})
    manifest = pd.read_csv(manifest_path)
    colours = palette(len(classes))

    predictions = work_folder(out_dir / "predictions")  # a directory() output: renamed into place at the end

    def keep(image_id: int, prediction: torch.Tensor, mask: torch.Tensor) -> None:
        save_mask(prediction.to(torch.uint8).cpu().numpy(), predictions / f"{image_id}.png", colours)

    report: dict[str, Any] = {"variant": state["variant"], "seed": settings.seed, "checkpoint_epoch": state["epoch"],
                              "val_miou_at_selection": state["val_miou"], "resolution": "label mask (original)", **how}
    per_image: dict[str, np.ndarray] = {}
    for split in ("val", "test"):
        rows = split_rows(manifest, split)
        result = evaluate_model(model, eval_loader(rows, Path(run_dir), settings), len(classes) + 1, device, dtype,
                                on_prediction=keep if split == "test" else None)
        report[split] = {"images": len(rows), **_metrics_record(result, classes)}
        prefix = "" if split == "test" else f"{split}_"
        per_image[f"{prefix}image_id"] = result["image_ids"]
        per_image[f"{prefix}confusion"] = result["per_image_confusion"]
        log.info("%s %s: mIoU %.4f, pixel accuracy %.4f", state["variant"], split, result["miou"],
                 result["pixel_accuracy"])
    publish_folder(predictions, out_dir / "predictions")
    names = ["background", *classes]
    write_csv(pd.DataFrame(per_image["confusion"].sum(axis=0), index=names, columns=names)
              .rename_axis("truth").reset_index(), out_dir / "confusion.csv")
    write_csv(per_image_table(per_image["image_id"], per_image["confusion"]), out_dir / "per_image.csv")
    with atomic_path(out_dir / "per_image_confusion.npz") as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **per_image)
    with atomic_path(out_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps(_finite(report), indent=2, allow_nan=False))
    return report
