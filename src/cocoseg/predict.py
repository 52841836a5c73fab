"""Label masks and overlays for new images with a trained checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cocoseg.data.masks import palette, save_mask
from cocoseg.datasets import eval_transform, read_rgb
from cocoseg.device import (autocast, precision_name, resolve_precision, select_device, to_channels_last,
                            use_threads)
from cocoseg.evaluate import load_model
from cocoseg.io import atomic_path

log = logging.getLogger(__name__)


def overlay(image: np.ndarray, mask: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image with each labelled pixel blended with its class colour (background left as is)."""
    blended = image.astype(np.float32)
    labelled = mask > 0
    blended[labelled] = (1 - alpha) * blended[labelled] + alpha * colours[mask[labelled]]
    return blended.astype(np.uint8)


@torch.inference_mode()
def predict(checkpoint: str | Path, images: list[str | Path], out_dir: str | Path, device_name: str = "auto",
            precision: str | None = None, threads: int | None = None) -> list[Path]:
    """Write ``<stem>.png`` (label mask: 0 background, 1..K classes) and ``<stem>_overlay.jpg`` per image.

    ``precision`` (auto, bf16, fp32) defaults to the checkpoint's ``train.precision``.
    """
    use_threads(threads)
    device = select_device(device_name)
    model, state = load_model(checkpoint, device)
    dtype = resolve_precision(precision or state["settings"].get("precision", "auto"), device)
    log.info("predicting on %s in %s", device, precision_name(dtype))
    transform = eval_transform(state["settings"]["image_size"])
    colours = np.array(palette(len(state["classes"])), dtype=np.float32).reshape(256, 3)
    out_dir = Path(out_dir)
    written = []
    for path in map(Path, images):
        image = read_rgb(path)
        tensor = torch.from_numpy(transform(image=image)["image"].transpose(2, 0, 1)).unsqueeze(0).to(device)
        with autocast(device, dtype):
            logits = model(to_channels_last(tensor))["out"]
        logits = F.interpolate(logits.float(), size=image.shape[:2], mode="bilinear", align_corners=False)
        mask = logits.argmax(1)[0].to(torch.uint8).cpu().numpy()
        mask_path = out_dir / f"{path.stem}.png"
        save_mask(mask, mask_path, palette(len(state["classes"])))
        with atomic_path(out_dir / f"{path.stem}_overlay.jpg") as tmp:
            Image.fromarray(overlay(image, mask, colours)).save(tmp, format="JPEG", quality=90)
        counts = np.bincount(mask.ravel(), minlength=len(state["classes"]) + 1)
        found = {name: int(counts[i]) for i, name in enumerate(state["classes"], start=1) if counts[i]}
        log.info("%s: %s", path, found or "only background")
        written.append(mask_path)
    return written
