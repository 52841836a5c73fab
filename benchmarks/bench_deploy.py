"""Deployment runtimes at the study's size: PyTorch fp32 against PyTorch as the project runs it, ONNX Runtime and
OpenVINO, side by side in one process on the same images (what the pipeline's ``deployment`` rule times on the
chosen model, here for both backbones without a trained one).

Each backbone is built untrained (no download), its batch-norm statistics measured on noise so that activations
have the sizes of a trained model's (initial statistics leave them near 1e-9, where fp32 can hit denormals), and
exported as the ``export`` rule exports (opset 17, dynamic batch and size). Timings are the medians of 3
interleaved rounds (``deployment.interleaved_timings``); ``speedup`` is the throughput over PyTorch fp32's.
``max_logit_difference`` is each runtime's largest difference from PyTorch fp32's logits on the timed batch.

    python benchmarks/bench_deploy.py                         # 256 px, both backbones, batch 16, all cores
    python benchmarks/bench_deploy.py --size 64 --batch-size 2 --seconds 0.2   # a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from cocoseg.deployment import count_flops, cpu_model, runtimes, time_runtimes
from cocoseg.device import autocast, resolve_precision, use_threads
from cocoseg.export import write_onnx
from cocoseg.models import build_model

NUM_CLASSES = 6
CPU = torch.device("cpu")


def calibrated_model(backbone: str, size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(backbone, NUM_CLASSES, "none")
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # a cumulative average: the statistics of the batches below
    with torch.no_grad():
        model.train()(torch.randn(8, 3, size, size))
    return model.eval()


def bench_backbone(backbone: str, args: argparse.Namespace, folder: Path) -> list[dict[str, Any]]:
    model = calibrated_model(backbone, args.size)
    onnx_path = folder / f"{backbone}.onnx"
    write_onnx(model, args.size, onnx_path)
    found, skipped = runtimes(onnx_path, model, resolve_precision(args.precision, CPU), args.threads)
    images = torch.randn(args.batch_size, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(images)["out"]
    params, flops = sum(p.numel() for p in model.parameters()), count_flops(model, args.size)
    rows = []
    for runtime, timing in zip(found, time_runtimes(found, images, args.seconds)):
        with torch.inference_mode(), autocast(CPU, runtime.autocast):
            logits = runtime.model(runtime.prepare(images))["out"].float()
        rows.append({"backbone": backbone, "runtime": runtime.name, "precision": runtime.precision,
                     "memory_format": runtime.memory_format, "batch_size": args.batch_size, **timing,
                     "params": params, "gflops_per_image": flops / 1e9,
                     "max_logit_difference": float((logits - expected).abs().max())})
    rows += [{"backbone": backbone, "runtime": s.runtime, "note": f"skipped: {s.reason}"} for s in skipped]
    return rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["mobilenet_v3_large", "resnet50"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=6.0, help="timing of each runtime at the batch (half at 1)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                        help="the project path's train.precision")
    parser.add_argument("--json", help="write the results here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    use_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row for backbone in args.backbones for row in bench_backbone(backbone, args, Path(tmp))]
    frame = pd.DataFrame(rows)
    frame.insert(frame.columns.get_loc("latency_ms"), "speedup",
                 frame["images_per_s"] / frame.groupby("backbone")["images_per_s"].transform("first"))
    cpu = cpu_model()
    print(f"{cpu}, {args.threads} threads, torch {torch.__version__}, {args.size}x{args.size}, batch {args.batch_size}")
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu, "threads": args.threads, "size": args.size,
                                               "batch_size": args.batch_size, "rows": frame.to_dict("records")},
                                              indent=2, default=str))


if __name__ == "__main__":
    main()
