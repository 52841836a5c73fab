"""Label masks and overlays for new images with a trained checkpoint or its exported ONNX model."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from cocoseg.config import schema_default
from cocoseg.data.masks import palette, save_mask
from cocoseg.datasets import IMAGENET_MEAN, IMAGENET_STD, eval_transform, read_rgb
from cocoseg.device import autocast, precision_name, resolve_precision, select_device, to_channels_last, use_threads
from cocoseg.evaluate import load_model
from cocoseg.export import checked_checkpoint
from cocoseg.io import atomic_path
from cocoseg.settings import TrainSettings

log = logging.getLogger(__name__)


def overlay(image: np.ndarray, mask: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image with each labelled pixel blended with its class colour (background left as is)."""
    blended = image.astype(np.float32)
    labelled = mask > 0
    blended[labelled] = (1 - alpha) * blended[labelled] + alpha * colours[mask[labelled]]
    return blended.astype(np.uint8)


# Pillow's modes of 8-bit photos, which convert to RGB as the training images did; 16-bit and float images
# ('I;16', 'I', 'F') would be clipped or rescaled by that conversion, and 1-bit ones are not photos.
PHOTO_MODES = frozenset({"L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr"})


def read_image(path: Path) -> np.ndarray:
    """An image as RGB, or an error that names the file and what to pass instead."""
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist; pass paths of JPEG or PNG files")
    try:
        with Image.open(path) as image:
            mode = image.mode
        if mode not in PHOTO_MODES:
            raise ValueError(f"{path} is a {mode!r} image, not an 8-bit photo; convert it to 8-bit RGB JPEG or PNG "
                             "(e.g. Pillow's image.convert('RGB') after scaling to 0-255)")
        return read_rgb(path)
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path} is not an image Pillow can read ({e}); pass JPEG or PNG files") from None


@dataclass
class Predictor:
    """What predicts: the network (PyTorch or an exported model), how its input is made, the classes."""

    model: torch.nn.Module
    device: torch.device
    dtype: torch.dtype | None
    image_size: int
    classes: list[str]
    memory_format: str = "channels_last"


def checkpoint_predictor(checkpoint: str | Path, device_name: str, precision: str | None) -> Predictor:
    device = select_device(device_name)
    model, state = load_model(checked_checkpoint(checkpoint), device)
    dtype = resolve_precision(precision or TrainSettings(**state["settings"]).precision, device)
    log.info("predicting with %s on %s in %s", checkpoint, device, precision_name(dtype))
    return Predictor(model, device, dtype, state["settings"]["image_size"], state["classes"])


def onnx_predictor(model_path: str | Path, threads: int | None) -> Predictor:
    """ONNX Runtime (fp32, CPU) on an exported model; its sidecar gives the input size and the classes."""
    from cocoseg.export import read_sidecar
    from cocoseg.runtimes import OnnxRuntimeModel

    model = OnnxRuntimeModel(model_path, threads)  # checks first that the file is ONNX
    meta = read_sidecar(model_path)
    normalisation = meta["input"]["normalisation"]
    if (tuple(normalisation["mean"]), tuple(normalisation["std"])) != (IMAGENET_MEAN, IMAGENET_STD):
        raise ValueError(f"{model_path}: its sidecar asks for mean {normalisation['mean']} and std "
                         f"{normalisation['std']}; this predictor feeds ImageNet's. Export it again with cocoseg")
    log.info("predicting with %s (ONNX Runtime %s, fp32)", model_path, model.version)
    return Predictor(model, torch.device("cpu"), None, meta["input"]["size"][0], meta["classes"][1:], "contiguous")


@torch.inference_mode()
def predict(checkpoint: str | Path | None, images: list[str | Path], out_dir: str | Path,
            device_name: str = schema_default("train.device"), precision: str | None = None,
            threads: int | None = None, model: str | Path | None = None) -> list[Path]:
    """Write ``<stem>.png`` (label mask: 0 background, 1..K classes) and ``<stem>_overlay.jpg`` per image.

    The network is the ``checkpoint``'s (``precision``: auto, bf16, fp32, default its ``train.precision``)
    or an exported ``model`` (ONNX, run by ONNX Runtime in fp32 on the CPU); either, not both.
    """
    if (checkpoint is None) == (model is None):
        raise ValueError("predict takes a checkpoint (--checkpoint best.pt) or an exported model "
                         "(--model model.onnx): one of them")
    use_threads(threads)
    predictor = onnx_predictor(model, threads) if model is not None else checkpoint_predictor(
        checkpoint, device_name, precision)  # type: ignore[arg-type]
    transform = eval_transform(predictor.image_size)
    colours = palette(len(predictor.classes))
    colour_table = np.array(colours, dtype=np.float32).reshape(256, 3)
    out_dir = Path(out_dir)
    written = []
    for path in map(Path, images):
        image = read_image(path)
        tensor = torch.from_numpy(transform(image=image)["image"].transpose(2, 0, 1)).unsqueeze(0)
        tensor = tensor.to(predictor.device)
        if predictor.memory_format == "channels_last":
            tensor = to_channels_last(tensor)
        with autocast(predictor.device, predictor.dtype):
            logits = predictor.model(tensor)["out"]
        logits = F.interpolate(logits.float(), size=image.shape[:2], mode="bilinear", align_corners=False)
        mask = logits.argmax(1)[0].to(torch.uint8).cpu().numpy()
        mask_path = out_dir / f"{path.stem}.png"
        save_mask(mask, mask_path, colours)
        with atomic_path(out_dir / f"{path.stem}_overlay.jpg") as tmp:
            Image.fromarray(overlay(image, mask, colour_table)).save(tmp, format="JPEG", quality=90)
        counts = np.bincount(mask.ravel(), minlength=len(predictor.classes) + 1)
        found = {name: int(counts[i]) for i, name in enumerate(predictor.classes, start=1) if counts[i]}
        log.info("%s: %s", path, found or "only background")
        written.append(mask_path)
    return written
