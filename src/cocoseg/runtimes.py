"""The exported model on the runtimes users deploy with, behind the interface ``evaluate_model`` calls.

Each runtime is a ``torch.nn.Module`` whose forward takes a normalised NCHW float batch and returns
``{"out": logits}`` as torchvision's models do, so that the test split goes through the project's
own evaluation (``evaluate.evaluate_model``: upsampling, argmax, confusion matrix) whatever runs the
network. Inputs are handed over as contiguous fp32 arrays, outputs come back as CPU tensors.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


class NotOnnx(ValueError):
    pass


def _checked_model_file(path: str | Path) -> Path:
    """An existing file that ONNX can parse, or an error naming it and the fix."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model {path} does not exist; export one with `python -m cocoseg export`")
    try:
        onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 (onnx raises DecodeError, ValueError, ... by version)
        raise NotOnnx(f"{path} is not an ONNX model ({type(e).__name__}); pass the model.onnx that `python -m "
                      "cocoseg export` wrote (a .pt checkpoint goes to --checkpoint)") from None
    return path


class OnnxRuntimeModel(torch.nn.Module):
    """ONNX Runtime's CPU execution provider, fp32, with ``threads`` intra-op threads."""

    runtime = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3  # warnings about unused initialisers are noise here
        # Idle threads sleep rather than spin: spinning ones would take the cores from whatever runs next
        # (the other runtimes timed beside it, the data loading of an evaluation).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(_checked_model_file(path)), options,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.precision = "fp32"
        self.version = ort.__version__

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        array = np.ascontiguousarray(images.detach().float().cpu().numpy())
        return {"out": torch.from_numpy(self.session.run(None, {self.input_name: array})[0])}


def openvino_precision() -> str:
    """bf16 where the CPU has native bf16 dot products (as ``cocoseg.device`` decides for PyTorch), else f32."""
    from cocoseg.device import cpu_has_native_bf16

    return "bf16" if cpu_has_native_bf16() else "f32"


class OpenVinoModel(torch.nn.Module):
    """OpenVINO's CPU plugin on the ONNX file: one synchronous request (the latency hint: one stream, every
    thread), at ``precision`` (bf16 or f32; default: ``openvino_precision()``)."""

    runtime = "openvino"

    def __init__(self, path: str | Path, threads: int | None = None, precision: str | None = None) -> None:
        super().__init__()
        import openvino as ov

        self.precision = precision or openvino_precision()
        properties: dict[str, Any] = {"INFERENCE_PRECISION_HINT": self.precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            properties["INFERENCE_NUM_THREADS"] = threads
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(_checked_model_file(path))), "CPU", properties)
        self.request = self.compiled.create_infer_request()
        self.version = ov.__version__

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        array = np.ascontiguousarray(images.detach().float().cpu().numpy())
        result = self.request.infer({0: array})
        return {"out": torch.from_numpy(np.array(result[self.compiled.output(0)]))}


@dataclass
class Unavailable:
    """A runtime that could not be loaded on this machine, and why (logged, then left out)."""

    runtime: str
    reason: str


def load_openvino(path: str | Path, threads: int | None = None) -> OpenVinoModel | Unavailable:
    """OpenVINO, or the reason it cannot run here (not installed, no CPU plugin for this CPU, ...)."""
    try:
        return OpenVinoModel(path, threads)
    except NotOnnx:
        raise
    except Exception as e:  # noqa: BLE001 (an import error, a plugin that refuses the CPU: skipped, never fatal)
        reason = f"{type(e).__name__}: {e}".splitlines()[0]
        log.warning("OpenVINO skipped: %s", reason)
        return Unavailable("openvino", reason)
