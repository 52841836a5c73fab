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
    fix = "pass the model.onnx that `python -m cocoseg export` wrote (a .pt checkpoint goes to --checkpoint)"
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError, ValueError, ... by version
        raise NotOnnx(f"{path} is not an ONNX model ({type(e).__name__}); {fix}") from None
    if not model.graph.node:  # an empty file, or any protobuf that happens to parse, loads as a model with no graph
        raise NotOnnx(f"{path} is not an ONNX model (it has no graph: {path.stat().st_size} bytes); {fix}")
    return path


class OnnxRuntimeModel(torch.nn.Module):
    """ONNX Runtime's CPU execution provider, fp32, with ``threads`` intra-op threads."""

    runtime = "onnxruntime"
    takes_contiguous = True  # evaluate_model hands it NCHW-contiguous input (channels_last is PyTorch's alone)

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
    """bf16 where the CPU has native bf16 dot products (as ``cocoseg.device`` decides for PyTorch), else fp32."""
    from cocoseg.device import cpu_has_native_bf16

    return "bf16" if cpu_has_native_bf16() else "fp32"


OPENVINO_HINTS = {"bf16": "bf16", "fp32": "f32"}  # the project's names of precisions, and OpenVINO's


class OpenVinoModel(torch.nn.Module):
    """OpenVINO's CPU plugin on the ONNX file: one synchronous request (the latency hint: one stream, every
    thread), at ``precision`` (bf16 or fp32; default: ``openvino_precision()``)."""

    runtime = "openvino"
    takes_contiguous = True

    def __init__(self, path: str | Path, threads: int | None = None, precision: str | None = None) -> None:
        super().__init__()
        import openvino as ov

        self.precision = precision or openvino_precision()
        properties: dict[str, Any] = {"INFERENCE_PRECISION_HINT": OPENVINO_HINTS[self.precision],
                                      "PERFORMANCE_HINT": "LATENCY"}
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


def load_runtime(runtime: str, path: str | Path, threads: int | None,
                 probe: torch.Tensor) -> OnnxRuntimeModel | OpenVinoModel | Unavailable:
    """The runtime on ``path`` once it has run ``probe`` (a first inference), or the reason it cannot run here
    (not installed, no CPU plugin for this CPU, a plugin that compiles the model but fails to run it, ...).
    A missing or non-ONNX file is the caller's error, raised."""
    try:
        model = (OnnxRuntimeModel if runtime == "onnxruntime" else OpenVinoModel)(path, threads)
        model(probe)
        return model
    except (NotOnnx, FileNotFoundError):
        raise
    except Exception as e:  # an import error, a plugin that refuses the CPU: skipped, never fatal
        reason = f"{type(e).__name__}: {e}".splitlines()[0]
        log.warning("%s skipped: %s", runtime, reason)
        return Unavailable(runtime, reason)


def load_openvino(path: str | Path, threads: int | None, probe: torch.Tensor) -> OpenVinoModel | Unavailable:
    """OpenVINO once it has run ``probe``, or the reason it cannot run here (``load_runtime``)."""
    return load_runtime("openvino", path, threads, probe)  # type: ignore[return-value]
