"""GPU correctness: the same code on CUDA as on the CPU. Skipped where there is no CUDA device.

These run on a GPU machine (`pytest tests/test_gpu.py`); CI has none, and the rest of the suite
checks the same code paths on the CPU.
"""

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import THREADS
from test_augment import as_batch, scenes
from test_train import run_training, settings, sigterm_after, weights

from cocoseg.augment import augment_batch, warp_batch
from cocoseg.metrics import ConfusionMatrix

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_warp_on_the_gpu_gives_the_cpu_masks():
    images, masks = as_batch(*scenes(8))
    flips, angles = torch.tensor([True, False] * 4), torch.linspace(-30, 30, 8)
    cpu = warp_batch(images, masks, flips, ~flips, angles)
    gpu = warp_batch(images.cuda(), masks.cuda(), flips.cuda(), (~flips).cuda(), angles.cuda())
    assert torch.equal(gpu[1].cpu(), cpu[1])
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], atol=1e-3, rtol=0)


def test_random_augmentation_on_the_gpu_keeps_labels():
    images, masks = as_batch(*scenes(16))
    generator = torch.Generator(device="cuda").manual_seed(0)
    _, labels = augment_batch(images.cuda(), masks.cuda(), 0.5, 0.5, 30.0, generator)
    assert set(labels.unique().tolist()) <= set(np.unique(masks.numpy()).tolist()) | {255}


def test_confusion_matrix_on_the_gpu_equals_the_cpu():
    generator = torch.Generator().manual_seed(0)
    truth = torch.randint(0, 6, (4, 64, 64), generator=generator)
    truth[:, :8] = 255
    prediction = torch.randint(0, 6, (4, 64, 64), generator=generator)
    cpu, gpu = ConfusionMatrix(6), ConfusionMatrix(6, "cuda")
    cpu.update(prediction, truth)
    gpu.update(prediction.cuda(), truth.cuda())
    np.testing.assert_array_equal(gpu.numpy(), cpu.numpy())


def test_training_on_the_gpu_keeps_the_split_there_and_repeats(run_dir, tmp_path):
    summary = run_training(run_dir, tmp_path / "a", settings=settings(device="cuda", epochs=2))
    assert summary["device"].startswith("cuda") and summary["data_path"] == "device"
    assert np.isfinite(pd.read_csv(tmp_path / "a" / "metrics.csv")["train_loss"]).all()
    again = run_training(run_dir, tmp_path / "b", settings=settings(device="cuda", epochs=2))
    # cudnn.benchmark may pick other kernels run to run: the same training, not bit for bit
    first, second = weights(tmp_path / "a" / "best.pt"), weights(tmp_path / "b" / "best.pt")
    assert again["best_epoch"] == summary["best_epoch"]
    for name in first:
        if first[name].is_floating_point():
            torch.testing.assert_close(second[name], first[name], atol=5e-2, rtol=5e-2)


def test_training_interrupted_on_the_gpu_resumes(run_dir, tmp_path, monkeypatch):
    """A SIGTERM on CUDA saves last.pt; the retry loads it (RNG states on the CPU) and finishes."""
    import cocoseg.train as train_module
    from cocoseg.train import TrainingInterrupted, load_checkpoint

    step = train_module.train_step
    monkeypatch.setattr(train_module, "train_step", sigterm_after(step))
    with pytest.raises(TrainingInterrupted):
        run_training(run_dir, tmp_path, settings=settings(device="cuda", epochs=2))
    monkeypatch.setattr(train_module, "train_step", step)
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 1
    summary = run_training(run_dir, tmp_path, settings=settings(device="cuda", epochs=2))
    assert summary["epochs"] == 2 and len(pd.read_csv(tmp_path / "metrics.csv")) == 2


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_gpus_with_nccl_train_one_model(run_dir, tmp_path):
    from conftest import CLASSES

    from cocoseg.train import train_distributed

    train_distributed(2, run_dir / "data" / "manifest.csv", run_dir, tmp_path, CLASSES,
                      settings(device="auto", epochs=1), variant="v", threads=THREADS)
    summary = pd.read_json(tmp_path / "training.json", typ="series")
    assert summary["world_size"] == 2 and summary["device"] == "cuda:0" and summary["sync_batch_norm"]
