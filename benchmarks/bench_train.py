"""Training and evaluation speed: this project's path against a loop written the study's way.

For each backbone, in one process on one device, on the same synthetic COCO-sized images:

- **cocoseg**: the cached split (resized uint8, on the GPU when it fits, or with
  ``--data-on-device``), batched augmentation there (``augment.augment_batch``), the library's
  ``train_step`` (``--precision``: by default bf16 autocast on CUDA and on CPUs with native bf16;
  channels_last on every device; fused Adam on CUDA; no host synchronisation), and evaluation as
  the ``evaluate`` rule runs it (``evaluate.eval_loader`` and ``evaluate_model``: images read and
  resized, logits upsampled to each mask's own resolution, a confusion matrix per image), on the
  engine ``--eval-engine`` names.
- **study**: JPEG and PNG decoded every step, albumentations on the CPU in DataLoader workers,
  batch 4, fp32, no channels_last, plain Adam, the loss read every step (a progress bar's
  postfix); evaluation batch by batch the same way, metrics on the host.

It prints images/s of training and evaluation, peak GPU memory and the ratios, and writes them
as JSON. On a CPU, run it small, as CI's smoke test does:

    python benchmarks/bench_train.py                              # GPU: 256 px, both backbones
    python benchmarks/bench_train.py --device cpu --size 64 --images 24 --steps 2 --warmup 1 --batch-size 8

The README's CPU rows: ``--device cpu --size 128 --images 200 --steps 8 --warmup 2 --batch-size 16
--eval-batch-size 32 --study-divisor 2 --threads 2 --num-workers 0`` (on a CPU, DataLoader workers
take cores from the model).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A
from torch.utils.data import DataLoader, Dataset

from cocoseg.batches import train_batches
from cocoseg.cache import build_cache, load_split
from cocoseg.data.masks import build_masks
from cocoseg.data.select import select_images
from cocoseg.data.split import split_manifest
from cocoseg.data.synth import generate, unpack
from cocoseg.datasets import IMAGENET_MEAN, IMAGENET_STD, read_mask, read_rgb, train_transform
from cocoseg.device import (
    MEMORY_FORMAT,
    PRECISIONS,
    precision_name,
    resolve_precision,
    select_device,
    to_channels_last,
    use_threads,
)
from cocoseg.evaluate import eval_loader, evaluate_model
from cocoseg.losses import build_loss
from cocoseg.models import build_model
from cocoseg.paths import RunPaths
from cocoseg.sampling import RepeatFactorSampler
from cocoseg.settings import TrainSettings
from cocoseg.train import train_step

CLASSES = ["person", "bicycle", "car", "motorcycle", "airplane"]
NUM_CLASSES = len(CLASSES) + 1


def prepare(root: Path, num_images: int, size: int, threads: int) -> tuple[pd.DataFrame, Path]:
    """COCO-sized synthetic images, their masks, a manifest, and the cache at ``size``; the train rows."""
    generate(root / "images.zip", root / "annotations.zip", num_images=num_images, seed=0, sizes=[(640, 480)])
    images_dir, annotations = unpack(root / "images.zip", root / "annotations.zip", root)
    data = root / "run" / "data"
    select_images(annotations, images_dir, CLASSES, data, seed=0)
    build_masks(data / "instances.json", data / "masks", data / "counts.csv")
    split_manifest(data / "selected.csv", [data / "counts.csv"], CLASSES, data / "manifest.csv", data / "splits.csv",
                   {"train": 0.8, "val": 0.1, "test": 0.1}, images_dir=images_dir)
    build_cache(data / "manifest.csv", root / "run", root / "cache", size, threads)
    manifest = pd.read_csv(data / "manifest.csv")
    return manifest[manifest["split"] == "train"].reset_index(drop=True), root / "run"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(run: Callable[[], int], device: torch.device) -> dict[str, float]:
    """Images/s of ``run`` (which returns the images it processed) and the peak GPU memory it took."""
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    images = run()
    synchronize(device)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"images_per_s": images / seconds, "seconds": seconds, "images": images, "peak_gib": peak}


def repeat(batches: Callable[[int], Iterator[Any]], count: int) -> Iterator[Any]:
    """``count`` batches, taking epoch after epoch of ``batches(epoch)`` as needed."""
    epoch = 0
    while True:
        for batch in batches(epoch):
            if count == 0:
                return
            yield batch
            count -= 1
        epoch += 1


def project_model(backbone: str, device: torch.device, compile_model: bool) -> tuple[torch.nn.Module, Any]:
    model = to_channels_last(build_model(backbone, NUM_CLASSES, "none").to(device))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    return (torch.compile(model) if compile_model else model), optimizer


def bench_project(backbone: str, rows: pd.DataFrame, cache: Path, manifest: Path, args: argparse.Namespace,
                  device: torch.device, batch_size: int) -> dict[str, Any]:
    precision = resolve_precision(args.precision, device)
    split = load_split(cache, "train", manifest, args.size)
    sampler = RepeatFactorSampler(np.ones(len(rows)), seed=0)
    batches = train_batches(split, sampler, batch_size, 0.5, 0.5, 15.0, 0, args.num_workers, device,
                            args.data_on_device)
    model, optimizer = project_model(backbone, device, args.compile)
    loss_fn = build_loss("cross_entropy").to(device)
    model.train()

    def steps(count: int) -> int:
        total, seen = torch.zeros((), device=device), 0
        for images, masks in repeat(batches.epoch, count):
            total += train_step(model, images, masks, loss_fn, optimizer, 0.0, device, precision)
            seen += len(images)
        return seen  # counted, not assumed: the smoke test checks it against what was asked

    steps(args.warmup)
    result = {"batch_size": batch_size, "train": measure(lambda: steps(args.steps), device),
              "data_path": type(batches).__name__, "precision": precision_name(precision),
              "memory_format": MEMORY_FORMAT}
    eval_model, eval_device, eval_precision = model, device, precision
    if args.eval_engine != "pytorch":  # what evaluate runs with evaluate.engine: the model exported, on the CPU
        eval_model, eval_device, eval_precision = engine_model(model, args), torch.device("cpu"), None
        result["eval_engine"] = f"{args.eval_engine} {eval_model.precision}"
    else:
        result["eval_engine"] = f"pytorch {result['precision']}"
    # What the evaluate rule runs: JPEG and mask PNG read, resized to the training size, the network, logits
    # upsampled to each mask's own resolution, a confusion matrix per image.
    settings = TrainSettings(backbone=backbone, loss="cross_entropy", sampling="uniform", image_size=args.size,
                             eval_batch_size=args.eval_batch_size, num_workers=args.num_workers,
                             weights_backbone="none")
    run_dir = Path(RunPaths.of_manifest(manifest).root)

    def evaluate(eval_rows: pd.DataFrame) -> int:
        loader = eval_loader(eval_rows, run_dir, settings)
        return len(evaluate_model(eval_model, loader, NUM_CLASSES, eval_device, eval_precision)["image_ids"])

    evaluate(rows.head(args.eval_batch_size))  # warm-up
    result["eval"] = measure(lambda: evaluate(rows), eval_device)
    return result


def engine_model(model: torch.nn.Module, args: argparse.Namespace) -> torch.nn.Module:
    """The trained model exported to ONNX (as the export rule does) and loaded by ``--eval-engine``."""
    from cocoseg.export import write_onnx
    from cocoseg.runtimes import OnnxRuntimeModel, OpenVinoModel

    plain = copy.deepcopy(getattr(model, "_orig_mod", model)).float().cpu().to(memory_format=torch.contiguous_format)
    path = Path(tempfile.mkdtemp()) / "model.onnx"
    write_onnx(plain.eval(), args.size, path)
    return (OnnxRuntimeModel if args.eval_engine == "onnxruntime" else OpenVinoModel)(path, args.threads)


def bench_project_fitting(backbone: str, rows: pd.DataFrame, cache: Path, manifest: Path, args: argparse.Namespace,
                          device: torch.device) -> dict[str, Any]:
    """``bench_project`` at ``--batch-size``, halved until the GPU memory holds it."""
    batch_size = args.batch_size
    while True:
        try:
            return bench_project(backbone, rows, cache, manifest, args, device, batch_size)
        except torch.OutOfMemoryError:
            if batch_size <= 4:
                raise
            batch_size //= 2
            torch.cuda.empty_cache()
            print(f"{backbone}: out of GPU memory; trying batch {batch_size}")


class StudyDataset(Dataset):
    """The study's data path: decode the JPEG and the mask PNG, then albumentations, every time."""

    def __init__(self, rows: pd.DataFrame, run_dir: Path, size: int, augment: bool) -> None:
        self.rows, self.run_dir = rows, run_dir
        steps: list[Any] = [A.Resize(size, size, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST)]
        if augment:
            steps += train_transform(0.5, 0.5, 15.0).transforms
        else:
            steps.append(A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD))
        self.transform = A.Compose(steps)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = self.rows.iloc[index]
        out = self.transform(image=read_rgb(row["image_path"]), mask=read_mask(self.run_dir / row["mask_path"]))
        return torch.from_numpy(out["image"].transpose(2, 0, 1).copy()), torch.from_numpy(out["mask"]).long()


def bench_study(backbone: str, rows: pd.DataFrame, run_dir: Path, args: argparse.Namespace,
                device: torch.device) -> dict[str, Any]:
    model = build_model(backbone, NUM_CLASSES, "none").to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = build_loss("cross_entropy").to(device)
    batch = 4

    def loader(augment: bool) -> Callable[[int], DataLoader]:
        dataset = StudyDataset(rows, run_dir, args.size, augment)
        return lambda epoch: DataLoader(dataset, batch_size=batch, shuffle=augment, drop_last=augment,
                                        num_workers=args.study_workers)

    def steps(count: int) -> int:
        model.train()
        seen = 0
        for host_images, host_masks in repeat(loader(True), count):
            images, masks = host_images.to(device), host_masks.to(device)
            loss = loss_fn(model(images)["out"], masks)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()  # the progress bar's running loss: a host synchronisation every step
            seen += len(images)
        return seen

    def evaluate() -> int:
        model.eval()
        confusion, seen = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64), 0
        with torch.no_grad():
            for images, masks in loader(False)(0):
                seen += len(images)
                prediction = model(images.to(device))["out"].argmax(1).cpu().numpy()
                truth = masks.numpy()
                valid = truth != 255
                confusion += np.bincount(truth[valid] * NUM_CLASSES + prediction[valid],
                                         minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES)
        return seen

    steps(max(1, args.warmup // 2))
    study_steps = max(1, args.steps * args.batch_size // batch // args.study_divisor)
    return {"batch_size": batch, "train": measure(lambda: steps(study_steps), device),
            "eval": measure(evaluate, device),
            "data_path": f"JPEG decode + albumentations, {args.study_workers} DataLoader workers",
            "precision": "fp32", "memory_format": "contiguous"}


def study_hours(paths: dict[str, Any], args: argparse.Namespace) -> dict[str, float]:
    """Hours for one backbone's variants of the study grid, from the measured rates (pure arithmetic).

    Each variant: ``--study-epochs`` epochs of ``--study-train`` training images and a validation
    pass over ``--study-val`` images. Oversampling lengthens its epochs by the mean repeat factor,
    which this leaves out (uniform epochs); data preparation and the test evaluation are left out too.
    """
    def hours(path: dict[str, Any]) -> float:
        epoch = args.study_train / path["train"]["images_per_s"] + args.study_val / path["eval"]["images_per_s"]
        return args.study_variants * args.study_epochs * epoch / 3600

    return {"cocoseg": hours(paths["cocoseg"]), "study": hours(paths["study"])}


def table(results: dict[str, Any]) -> str:
    lines = [f"{'backbone':<20}{'path':<9}{'batch':>6}{'precision':>10}{'format':>15}{'train img/s':>12}"
             f"{'eval img/s':>12}{'peak GiB':>10}  eval by"]
    for backbone, paths in results["backbones"].items():
        for name in ("study", "cocoseg"):
            r = paths[name]
            lines.append(f"{backbone:<20}{name:<9}{r['batch_size']:>6}{r['precision']:>10}{r['memory_format']:>15}"
                         f"{r['train']['images_per_s']:>12.1f}{r['eval']['images_per_s']:>12.1f}"
                         f"{r['train']['peak_gib']:>10.2f}  {r.get('eval_engine', 'pytorch fp32')}")
        lines.append(f"{'':<20}{'ratio':<40}{paths['train_ratio']:>11.1f}x{paths['eval_ratio']:>11.1f}x"
                     f"   eval/train {paths['eval_over_train']:.1f}x")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backbones", nargs="+", default=["mobilenet_v3_large", "resnet50"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--images", type=int, default=1024, help="synthetic 640x480 images to generate")
    parser.add_argument("--batch-size", type=int, default=128, help="the project path's batch size")
    parser.add_argument("--eval-batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=100, help="timed steps of the project path")
    parser.add_argument("--warmup", type=int, default=15)
    parser.add_argument("--study-divisor", type=int, default=20,
                        help="the study loop runs steps*batch_size/4/divisor steps (it is that much slower)")
    parser.add_argument("--study-workers", type=int, default=2)
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader workers when the data stays on the host")
    parser.add_argument("--data-on-device", choices=["auto", "always", "never"], default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile the project's model")
    parser.add_argument("--eval-engine", choices=["pytorch", "onnxruntime", "openvino"], default="pytorch",
                        help="what runs the project path's evaluation, as evaluate.engine (the study loop: PyTorch)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="the project path's train.precision (the study loop stays fp32)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--study-train", type=int, default=6400, help="train images of the full study")
    parser.add_argument("--study-val", type=int, default=800, help="val images of the full study")
    parser.add_argument("--study-epochs", type=int, default=30)
    parser.add_argument("--study-variants", type=int, default=6, help="variants per backbone in the study grid")
    parser.add_argument("--json", help="write the results here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    use_threads(args.threads)
    device = select_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()}, " \
        f"{args.threads} threads)"
    precision = precision_name(resolve_precision(args.precision, device))
    results: dict[str, Any] = {"device": name, "torch": torch.__version__, "size": args.size,
                               "batch_size": args.batch_size, "study_batch_size": 4, "precision": precision,
                               "memory_format": MEMORY_FORMAT, "backbones": {}}
    with tempfile.TemporaryDirectory() as tmp:
        rows, run_dir = prepare(Path(tmp), args.images, args.size, args.threads)
        results["images"] = len(rows)
        manifest = run_dir / "data" / "manifest.csv"
        for backbone in args.backbones:
            torch.manual_seed(0)
            ours = bench_project_fitting(backbone, rows, Path(tmp) / "cache", manifest, args, device)
            study = bench_study(backbone, rows, run_dir, args, device)
            results["backbones"][backbone] = {
                "cocoseg": ours, "study": study,
                "train_ratio": ours["train"]["images_per_s"] / study["train"]["images_per_s"],
                "eval_ratio": ours["eval"]["images_per_s"] / study["eval"]["images_per_s"],
                "eval_over_train": ours["eval"]["images_per_s"] / ours["train"]["images_per_s"]}
            results["backbones"][backbone]["grid_hours"] = study_hours(results["backbones"][backbone], args)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print(f"{name}, torch {torch.__version__}, {args.size}x{args.size}, {results['images']} images, "
          f"project batch {args.batch_size} ({precision}, {MEMORY_FORMAT}), study batch 4 (fp32, contiguous)")
    print(table(results))
    total = {path: sum(b["grid_hours"][path] for b in results["backbones"].values()) for path in ("cocoseg", "study")}
    results["grid_hours"] = total
    print(f"extrapolated grid ({args.study_variants} variants per backbone, {args.study_epochs} epochs of "
          f"{args.study_train} train + {args.study_val} val images, uniform epochs): "
          f"{total['cocoseg']:.2f} h with cocoseg, {total['study']:.1f} h with the study loop")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
