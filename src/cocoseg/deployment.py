"""The exported model checked on the study's own test split, and the runtimes timed side by side.

Verification (``verify``): the test split goes through ONNX Runtime and through the checkpoint in
PyTorch fp32 on the CPU, both through the project's evaluation (``evaluate_model``: each image's
logits upsampled to its label mask, argmax, one confusion matrix). The largest logit difference
must stay within ``logit_tolerance`` relative to the logits' scale (``logit_limit``) and the test
mIoUs within ``miou_tolerance``; a failure raises ``VerificationFailed`` naming the runtime, the
metric and the difference.

Timing (``deployment_table``): in one process, on the same test images resized to the study's
size, PyTorch fp32 (contiguous), PyTorch as the project runs it (``train.precision`` resolved on
this CPU, channels_last), ONNX Runtime fp32 and OpenVINO (bf16 where the CPU has native bf16,
else fp32; skipped with its reason where it cannot load or run). Each gets throughput at a batch,
latency at batch 1, and the test mIoU of its own predictions; parameters and FLOPs are counted
on the PyTorch model (``FlopCounterMode``: 2 FLOPs a multiply-add), the same graph on every runtime.
"""

from __future__ import annotations

import copy
import json
import logging
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cocoseg.config import schema_default
from cocoseg.data.split import split_rows
from cocoseg.datasets import eval_transform, read_rgb
from cocoseg.device import autocast, precision_name, resolve_precision, to_channels_last, use_threads
from cocoseg.evaluate import eval_loader, evaluate_model
from cocoseg.export import checked_checkpoint, export, fp32_model, rank_runs, read_sidecar, sha256_of
from cocoseg.io import write_csv, write_html_table
from cocoseg.paths import RunPaths
from cocoseg.runtimes import OnnxRuntimeModel, Unavailable, load_openvino
from cocoseg.settings import TrainSettings

log = logging.getLogger(__name__)

CPU = torch.device("cpu")


class VerificationFailed(RuntimeError):
    pass


def logit_limit(tolerance: float, max_abs_logit: float) -> float:
    """The largest allowed |logit difference|: ``tolerance`` times the logits' scale, ``max(1, max |logit|)``
    (float32 rounding grows with the logits' size; below 1 the bound stays absolute)."""
    return tolerance * max(1.0, max_abs_logit)


def logit_failure(runtime: str, difference: float, max_abs_logit: float, tolerance: float, where: str) -> str | None:
    """Why ``runtime``'s logits fail the check against PyTorch fp32's, or None when they pass."""
    limit = logit_limit(tolerance, max_abs_logit)
    if difference <= limit:
        return None
    return (f"{runtime}: max logit difference from PyTorch fp32 is {difference:.3g} on {where}, above the "
            f"tolerance {tolerance:g} x max(1, max |logit| {max_abs_logit:.3g}) = {limit:.3g}")


class Paired(torch.nn.Module):
    """The candidate runtime's output, with the largest difference from the reference's logits seen so far."""

    def __init__(self, candidate: torch.nn.Module, reference: torch.nn.Module) -> None:
        super().__init__()
        self.candidate, self.reference = candidate, reference
        self.takes_contiguous = getattr(candidate, "takes_contiguous", False)
        self.max_difference = 0.0
        self.max_logit = 0.0

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.candidate(images)
        expected = self.reference(images.contiguous())["out"].float()
        self.max_difference = max(self.max_difference, float((out["out"] - expected).abs().max()))
        self.max_logit = max(self.max_logit, float(expected.abs().max()))
        return out


def split_loader(manifest: str | Path, run_dir: str | Path, state: dict[str, Any],
               batch_size: int) -> tuple[pd.DataFrame, Any]:
    rows = split_rows(pd.read_csv(manifest), "test")
    if rows.empty:
        raise ValueError(f"{manifest} has no test images; the split's test fraction must be above 0")
    settings = TrainSettings(**{**state["settings"], "num_workers": 0, "eval_batch_size": batch_size})
    return rows, eval_loader(rows, Path(run_dir), settings)


def split_miou(model: torch.nn.Module, loader: Any, num_classes: int, precision: torch.dtype | None = None) -> float:
    return float(evaluate_model(model, loader, num_classes, CPU, precision)["miou"])


def verify(onnx_path: str | Path, model: torch.nn.Module, state: dict[str, Any], manifest: str | Path,
           run_dir: str | Path, batch_size: int = schema_default("export.batch_size"), threads: int | None = None,
           logit_tolerance: float = schema_default("export.logit_tolerance"),
           miou_tolerance: float = schema_default("export.miou_tolerance"),
           reported: dict[str, Any] | None = None) -> dict[str, Any]:
    """ONNX Runtime against PyTorch fp32 on the test split (see the module's text); ``reported`` is the run's
    ``evaluation/metrics.json``, whose test mIoU (in the precision evaluate ran in) is set beside them."""
    use_threads(threads)
    num_classes = len(state["classes"]) + 1
    rows, loader = split_loader(manifest, run_dir, state, batch_size)
    paired = Paired(OnnxRuntimeModel(onnx_path, threads), model)
    onnx_miou = split_miou(paired, loader, num_classes)
    torch_miou = split_miou(model, loader, num_classes)
    result = {"runtime": "onnxruntime", "precision": "fp32", "reference": "pytorch fp32 (cpu)",
              "test_images": len(rows), "max_logit_difference": paired.max_difference,
              "max_abs_logit": paired.max_logit, "logit_tolerance": logit_tolerance,
              "logit_limit": logit_limit(logit_tolerance, paired.max_logit),
              "test_miou": onnx_miou, "test_miou_pytorch_fp32": torch_miou,
              "miou_difference": onnx_miou - torch_miou, "miou_tolerance": miou_tolerance}
    if reported is not None:
        result.update(test_miou_reported=reported["test"]["miou"], reported_precision=reported["precision"],
                      miou_difference_from_reported=onnx_miou - reported["test"]["miou"])
    log.info("verification: %s", result)
    failure = logit_failure("onnxruntime fp32", paired.max_difference, paired.max_logit, logit_tolerance,
                            f"the {len(rows)} test images of {manifest}")
    if failure:
        raise VerificationFailed(failure)
    if not abs(onnx_miou - torch_miou) <= miou_tolerance:
        raise VerificationFailed(f"onnxruntime fp32: test mIoU {onnx_miou:.6f} differs from PyTorch fp32's "
                                 f"{torch_miou:.6f} by {onnx_miou - torch_miou:+.3g}, beyond {miou_tolerance:g}")
    return result


def count_flops(model: torch.nn.Module, image_size: int) -> int:
    """FLOPs of one image at ``image_size``, counted by torch's dispatcher (2 a multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, image_size, image_size))
    return int(counter.get_total_flops())


def timing_images(rows: pd.DataFrame, image_size: int, count: int) -> torch.Tensor:
    """``count`` test images (repeated when the split has fewer), resized and normalised as evaluation does."""
    transform = eval_transform(image_size)
    paths = [rows["image_path"].iloc[i % len(rows)] for i in range(count)]
    images = [transform(image=read_rgb(path))["image"].transpose(2, 0, 1) for path in paths]
    return torch.from_numpy(np.ascontiguousarray(np.stack(images)))


def seconds_per_call(call: Callable[[], Any], seconds: float, min_calls: int = 2) -> float:
    """The median wall time of ``call`` over at least ``min_calls`` calls and ``seconds``."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < seconds:
        begin = time.perf_counter()
        call()
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def interleaved_timings(calls: list[Callable[[], Any]], seconds: float, rounds: int = 3) -> list[float]:
    """Each call's median seconds over ``rounds`` rounds that take the calls in turn (after one warm-up call
    each): a machine that slows down or speeds up part way through weighs on every call alike."""
    for call in calls:
        call()
    per_round = [[seconds_per_call(call, seconds / rounds) for call in calls] for _ in range(rounds)]
    return [statistics.median(times) for times in zip(*per_round)]


@dataclass
class Runtime:
    """One way to run the model: the module ``evaluate_model`` calls, its autocast dtype and input format."""

    name: str
    precision: str
    memory_format: str
    model: torch.nn.Module
    autocast: torch.dtype | None = None

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        return to_channels_last(images) if self.memory_format == "channels_last" else images.contiguous()

    def run(self, images: torch.Tensor) -> None:
        with torch.inference_mode(), autocast(CPU, self.autocast):
            self.model(images)


def runtimes(onnx_path: str | Path, model: torch.nn.Module, dtype: torch.dtype | None, threads: int | None,
             probe: torch.Tensor | None = None) -> tuple[list[Runtime], list[Unavailable]]:
    """The runtimes of the table for ``model`` (fp32, contiguous) and its export, ``dtype`` the project's
    autocast on this CPU; and those that could not load here or failed to run ``probe`` (default: one blank
    64 px image; the graph's size is dynamic)."""
    if probe is None:
        probe = torch.zeros(1, 3, 64, 64)
    found: list[Runtime] = [
        Runtime("pytorch", "fp32", "contiguous", model),
        Runtime("pytorch (project)", precision_name(dtype), "channels_last", to_channels_last(copy.deepcopy(model)),
                dtype),
        Runtime("onnxruntime", "fp32", "contiguous", OnnxRuntimeModel(onnx_path, threads)),
    ]
    skipped = []
    openvino = load_openvino(onnx_path, threads, probe)
    if isinstance(openvino, Unavailable):
        skipped.append(openvino)
    else:
        found.append(Runtime("openvino", openvino.precision, "contiguous", openvino))
    return found, skipped


def time_runtimes(found: list[Runtime], images: torch.Tensor, seconds: float) -> list[dict[str, float]]:
    """Throughput at the batch ``images`` and latency of its first image alone, for each runtime, interleaved."""
    batch_seconds = interleaved_timings([_bound(r.run, r.prepare(images)) for r in found], seconds)
    image_seconds = interleaved_timings([_bound(r.run, r.prepare(images[:1])) for r in found], seconds / 2)
    return [{"images_per_s": len(images) / per_batch, "latency_ms": latency * 1e3}
            for per_batch, latency in zip(batch_seconds, image_seconds)]


def _bound(run: Callable[[torch.Tensor], None], images: torch.Tensor) -> Callable[[], None]:
    return lambda: run(images)


def deployment_table(onnx_path: str | Path, checkpoint: str | Path, manifest: str | Path, run_dir: str | Path,
                     batch_size: int = 16, seconds: float = 2.0, threads: int | None = None) -> pd.DataFrame:
    """One row per runtime: throughput, latency, parameters, FLOPs, test mIoU (see the module's text)."""
    use_threads(threads)
    reference, state = fp32_model(checkpoint)
    dtype = resolve_precision(TrainSettings(**state["settings"]).precision, CPU)
    size, num_classes = state["settings"]["image_size"], len(state["classes"]) + 1
    rows, loader = split_loader(manifest, run_dir, state, batch_size)
    images = timing_images(rows, size, batch_size)
    found, skipped = runtimes(onnx_path, reference, dtype, threads, images[:1])
    params = sum(p.numel() for p in reference.parameters())
    flops = count_flops(reference, size)
    table = []
    for runtime, timing in zip(found, time_runtimes(found, images, seconds)):
        miou = split_miou(runtime.model, loader, num_classes, runtime.autocast)
        log.info("%s %s: %.1f images/s, %.2f ms an image, test mIoU %.4f", runtime.name, runtime.precision,
                 timing["images_per_s"], timing["latency_ms"], miou)
        table.append({"runtime": runtime.name, "precision": runtime.precision, "memory_format": runtime.memory_format,
                      "image_size": size, "batch_size": batch_size, **timing, "params": params,
                      "gflops_per_image": flops / 1e9, "test_miou": miou, "note": ""})
    for runtime in skipped:
        table.append({"runtime": runtime.runtime, "note": f"skipped: {runtime.reason}"})
    frame = pd.DataFrame(table)
    base = frame.iloc[0]
    frame.insert(frame.columns.get_loc("latency_ms"), "speedup", frame["images_per_s"] / base["images_per_s"])
    frame.insert(frame.columns.get_loc("note"), "test_miou_difference", frame["test_miou"] - base["test_miou"])
    frame["threads"] = torch.get_num_threads()
    frame["cpu"] = cpu_model()
    return frame


def cpu_model() -> str:
    """The CPU's model name as Linux reports it (``platform.processor()`` is often empty)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_deployment(onnx_path: str | Path, checkpoint: str | Path, manifest: str | Path, run_dir: str | Path,
                     csv_path: str | Path, html_path: str | Path, batch_size: int = 16, seconds: float = 2.0,
                     threads: int | None = None) -> pd.DataFrame:
    meta = read_sidecar(onnx_path)
    provenance = meta["provenance"]
    if sha256_of(checked_checkpoint(checkpoint)) != provenance["checkpoint_sha256"]:
        raise ValueError(f"{checkpoint} is not the checkpoint {onnx_path} was exported from (its sha256 differs from "
                         "the sidecar's); export it again")
    frame = deployment_table(onnx_path, checkpoint, manifest, run_dir, batch_size, seconds, threads)
    write_csv(frame, csv_path)
    test_images = int((pd.read_csv(manifest)["split"] == "test").sum())
    caption = (f"{provenance['variant']} seed {provenance['seed']} at {meta['input']['size'][0]} px, "
               f"{test_images} test images, on {frame['cpu'].iloc[0]} with {frame['threads'].iloc[0]} threads.")
    write_html_table(frame.drop(columns=["cpu"]), html_path, caption)
    return frame


def reported_metrics(checkpoint: str | Path) -> dict[str, Any] | None:
    """The run's ``evaluation/metrics.json`` beside its ``best.pt``, when evaluate has written it."""
    path = RunPaths.evaluation_metrics_beside(checkpoint)
    return json.loads(path.read_text()) if path.is_file() else None


def chosen_checkpoint(metrics_paths: list[str | Path]) -> Path:
    """The ``best.pt`` of the run validation chooses (``export.rank_runs``): beside its ``evaluation/`` folder."""
    chosen = rank_runs(metrics_paths).iloc[0]
    log.info("chosen by validation: %s seed %s (configuration mean val mIoU %.4f, its own %.4f)", chosen["variant"],
             chosen["seed"], chosen["configuration_val_miou"], chosen["val_miou"])
    return RunPaths.best_beside(chosen["metrics"])


def export_verified(checkpoint: str | Path, onnx_path: str | Path, run: str, manifest: str | Path,
                    run_dir: str | Path, batch_size: int = schema_default("export.batch_size"),
                    threads: int | None = None, logit_tolerance: float = schema_default("export.logit_tolerance"),
                    miou_tolerance: float = schema_default("export.miou_tolerance")) -> dict[str, Any]:
    """``checkpoint`` as ONNX with its sidecar, published only once ``verify`` passes on the test split."""

    def check(path: Path, model: torch.nn.Module, state: dict[str, Any]) -> dict[str, Any]:
        return verify(path, model, state, manifest, run_dir, batch_size, threads, logit_tolerance, miou_tolerance,
                      reported_metrics(checkpoint))

    return export(checkpoint, onnx_path, run, check)
