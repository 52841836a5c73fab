"""The study's chosen model as ONNX, with a sidecar JSON that says how to feed it and where it came from.

The configuration ranked first by validation (mean validation mIoU over seeds, as the summary and
comparison tables rank them) is chosen, and within it the seed with the best validation mIoU; test
numbers never choose. The ONNX graph is the network alone: its input is the image resized to the
study's size and normalised with ImageNet's mean and std (the sidecar states how), its output the
logits at the input's resolution. Batch, height and width are dynamic.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from cocoseg.data.masks import palette
from cocoseg.datasets import IMAGENET_MEAN, IMAGENET_STD
from cocoseg.io import atomic_path, write_text

log = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME, OUTPUT_NAME = "image", "logits"


def rank_runs(metrics_paths: list[str | Path]) -> pd.DataFrame:
    """Every evaluated run (variant, seed, val_miou, metrics path), the chosen one first: configurations by
    their mean validation mIoU over seeds, then each configuration's runs by their own, then by seed."""
    rows = []
    for path in map(Path, metrics_paths):
        metrics = json.loads(path.read_text())
        rows.append({"variant": metrics["variant"], "seed": metrics["seed"], "val_miou": metrics["val"]["miou"],
                     "test_miou": metrics["test"]["miou"], "metrics": str(path)})
    if not rows:
        raise ValueError("no evaluated run to choose from; run `evaluate` first")
    runs = pd.DataFrame(rows)
    runs["configuration_val_miou"] = runs.groupby("variant")["val_miou"].transform("mean")
    return runs.sort_values(["configuration_val_miou", "val_miou", "seed"], ascending=[False, False, True],
                            na_position="last", kind="stable").reset_index(drop=True)


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class LogitsOnly(torch.nn.Module):
    """torchvision's segmentation models return a dict; ONNX gets the main logits alone."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)["out"]


def checked_checkpoint(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; train the run first (snakemake or "
                                "`python -m cocoseg train`) or name an existing best.pt")
    return path


def fp32_model(checkpoint: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The checkpoint's model on the CPU in fp32 and the contiguous memory format: the reference of every check."""
    from cocoseg.evaluate import load_model

    model, state = load_model(checked_checkpoint(checkpoint), torch.device("cpu"))
    return model.to(memory_format=torch.contiguous_format).float().eval(), state


def write_onnx(model: torch.nn.Module, image_size: int, path: Path) -> None:
    """Opset 17 through torch's TorchScript exporter (``dynamo=False``).

    With torch 2.14.1 the default dynamo exporter needs onnxscript, has no opset-17 implementations
    (it writes opset 18, and ONNX's converter fails to take DeepLabV3 down to 17: an ``axes`` input computed
    at run time cannot become an attribute again),
    and asks for ``dynamic_shapes``; the TorchScript exporter writes opset 17 with dynamic batch,
    height and width directly (it warns that it is deprecated: the warning is silenced here).
    The wrapper is put in eval mode: the exporter restores its training flag on every submodule.
    """
    example = torch.zeros(1, 3, image_size, image_size)
    axes = {0: "batch", 2: "height", 3: "width"}
    wrapper = LogitsOnly(model).eval()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(wrapper, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes}, opset_version=OPSET,
                          do_constant_folding=True, dynamo=False)


def sidecar(state: dict[str, Any], checkpoint: Path, run: str) -> dict[str, Any]:
    """What a user needs to feed the model and read its output, and where it came from."""
    import onnx

    settings, classes = state["settings"], state["classes"]
    colours = palette(len(classes))
    return {
        "format": "onnx", "opset": OPSET, "exporter": "torch.onnx.export (dynamo=False)",
        "input": {"name": INPUT_NAME, "layout": "NCHW", "dtype": "float32", "channels": "RGB",
                  "size": [settings["image_size"], settings["image_size"]],
                  "dynamic_axes": ["batch", "height", "width"],
                  "resize": f"bilinear to {settings['image_size']}x{settings['image_size']} (the study's input size)",
                  "normalisation": {"formula": "(pixel / 255 - mean) / std", "scale": 1 / 255,
                                    "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}},
        "output": {"name": OUTPUT_NAME, "layout": "NCHW", "meaning": "class logits at the input's resolution; "
                   "upsample bilinearly to the image's size, then argmax over C"},
        "classes": ["background", *classes],
        "palette": [colours[3 * i : 3 * i + 3] for i in range(len(classes) + 1)],
        "provenance": {"run": run, "variant": state["variant"], "seed": settings["seed"],
                       "backbone": settings["backbone"], "checkpoint": str(checkpoint),
                       "checkpoint_sha256": sha256_of(checkpoint), "checkpoint_epoch": state["epoch"],
                       "val_miou_at_selection": state["val_miou"], "torch": torch.__version__,
                       "onnx": onnx.__version__},
    }


def sidecar_path(onnx_path: str | Path) -> Path:
    """The sidecar JSON of a model: ``model.json`` beside ``model.onnx``."""
    return Path(onnx_path).with_suffix(".json")


def export(checkpoint: str | Path, onnx_path: str | Path, run: str, check: Any = None) -> dict[str, Any]:
    """Write ``onnx_path`` and its sidecar (``sidecar_path``); ``check(onnx_file, model, state)``, when given,
    runs on the written model before either is published, and what it returns goes into the sidecar as
    ``verification``: a model that fails its checks never appears. The model is published (renamed into place)
    before its sidecar, so that a crash between the two never leaves a sidecar without its model."""
    import onnx

    checkpoint = checked_checkpoint(checkpoint)
    model, state = fp32_model(checkpoint)
    meta = sidecar(state, checkpoint, run)
    with atomic_path(onnx_path) as tmp:
        write_onnx(model, state["settings"]["image_size"], tmp)
        onnx.checker.check_model(str(tmp))
        if check is not None:
            meta["verification"] = check(tmp, model, state)
    write_text(json.dumps(meta, indent=2) + "\n", sidecar_path(onnx_path))
    log.info("exported %s seed %s to %s", state["variant"], state["settings"]["seed"], onnx_path)
    return meta


def read_sidecar(model_path: str | Path) -> dict[str, Any]:
    """The sidecar of an exported model: ``model.json`` beside ``model.onnx``."""
    path = sidecar_path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} (the sidecar of {model_path}) is missing; export with `python -m cocoseg "
                                "export`, which writes both")
    return json.loads(path.read_text())
