"""Precision and memory format: bf16 and channels_last against plain fp32 NCHW, the reference."""

import contextlib
import copy
import os
import signal
import subprocess
import sys

import pytest
import torch
from conftest import group_members, run_script

from cocoseg.device import autocast, cpu_flags, cpu_has_native_bf16, resolve_precision, to_channels_last, use_threads
from cocoseg.lifecycle import process_threads
from cocoseg.losses import build_loss
from cocoseg.models import build_model
from cocoseg.train import train_step

NUM_CLASSES = 6
CPU = torch.device("cpu")
needs_bf16 = pytest.mark.skipif(not cpu_has_native_bf16(),
                                reason="this CPU has no native bf16 (AVX512-BF16 or AMX): bf16 would be emulated")


def model_with_statistics(backbone: str, images: torch.Tensor) -> torch.nn.Module:
    """A random-weight model whose batch-norm running statistics are those of ``images`` (as after training)."""
    torch.manual_seed(0)
    model = build_model(backbone, NUM_CLASSES, "none", bn_momentum=None)
    model.train()
    with torch.no_grad():
        model(images)
    return model.eval()


def without_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Dropout masks are drawn in memory order, so a channels_last tensor gets other ones: compare without."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.eval()
    return model


def batch(count: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(count, 3, size, size, generator=generator)
    masks = torch.randint(0, NUM_CLASSES, (count, size, size), generator=generator)
    return images, masks


@pytest.mark.skipif(not cpu_flags(), reason="no /proc/cpuinfo flags to compare with")
def test_native_bf16_is_detected_as_the_cpu_flags_say():
    assert cpu_has_native_bf16() == bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def test_precision_is_resolved_per_device(monkeypatch):
    cuda = torch.device("cuda")
    assert resolve_precision("auto", cuda) == torch.bfloat16
    assert resolve_precision("fp32", cuda) is None and resolve_precision("bf16", CPU) == torch.bfloat16
    for native in (True, False):
        monkeypatch.setattr("cocoseg.device.cpu_has_native_bf16", lambda native=native: native)
        assert resolve_precision("auto", CPU) == (torch.bfloat16 if native else None)
        assert resolve_precision("fp32", CPU) is None
    with pytest.raises(ValueError, match="unknown train.precision 'fp16'"):
        resolve_precision("fp16", CPU)


def test_the_jobs_threads_are_shared_by_the_ranks_of_one_machine(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert process_threads(None) is None and process_threads(4) == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun's, or train_distributed's
    assert process_threads(4) == 2 and process_threads(1) == 1


def test_threads_are_set_for_torch_and_opencv():
    import cv2

    before = torch.get_num_threads(), cv2.getNumThreads()
    try:
        use_threads(3)
        assert (torch.get_num_threads(), cv2.getNumThreads()) == (3, 3)
        use_threads(None)  # leaves them as they are
        assert (torch.get_num_threads(), cv2.getNumThreads()) == (3, 3)
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])


@pytest.mark.parametrize("backbone", ["mobilenet_v3_large", "resnet50"])
def test_channels_last_keeps_fp32_logits(backbone):
    """Only the order of the sums changes: fp32 rounding, relative error ~1e-6 (measured 1e-6 here)."""
    images, _ = batch(4, 64)
    model = model_with_statistics(backbone, images)
    with torch.inference_mode():
        reference = model(images)["out"]
        logits = to_channels_last(copy.deepcopy(model))(to_channels_last(images))["out"]
    assert logits.is_contiguous(memory_format=torch.channels_last)
    scale = float(reference.abs().max())
    torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-4 * scale)
    assert torch.equal(logits.argmax(1), reference.argmax(1))


def test_fp32_train_step_in_channels_last_is_as_exact_as_nchw():
    """The library's step (fp32, channels_last) against the exact step (float64, NCHW, written out here).

    channels_last only changes the order of the sums: its gradients are no further from the exact ones
    than those of fp32 NCHW, the numerics before it (measured, MobileNetV3, 4 images of 48 px:
    relative L2 error 1.4e-5 for channels_last, 6.4e-4 for NCHW).
    """
    images, masks = batch(4, 48)
    model = without_dropout(model_with_statistics("mobilenet_v3_large", images).train())
    loss_fn = build_loss("cross_entropy")

    def gradients(trained: torch.nn.Module) -> torch.Tensor:
        return torch.cat([p.grad.double().flatten() for p in trained.parameters()])

    def plain_step(trained: torch.nn.Module, inputs: torch.Tensor) -> tuple[float, torch.Tensor]:
        loss = loss_fn(trained(inputs)["out"], masks)
        loss.backward()
        return float(loss.detach()), gradients(trained)

    exact_loss, exact = plain_step(copy.deepcopy(model).double(), images.double())
    _, nchw = plain_step(copy.deepcopy(model), images)
    ours = to_channels_last(copy.deepcopy(model))
    loss = train_step(ours, images, masks, loss_fn, torch.optim.SGD(ours.parameters(), lr=0.1), 0.0, CPU, None)

    def error(grads: torch.Tensor) -> float:
        return float((grads - exact).norm() / exact.norm())

    assert float(loss) == pytest.approx(exact_loss, rel=1e-5)
    assert error(gradients(ours)) <= max(error(nchw), 1e-4), (error(gradients(ours)), error(nchw))


@needs_bf16
@pytest.mark.parametrize("backbone", ["mobilenet_v3_large", "resnet50"])
def test_bf16_logits_are_close_to_fp32(backbone):
    """bf16 keeps 8 significant bits (unit roundoff 2^-8 = 0.4%); convolutions take bf16 inputs and
    weights but accumulate in fp32, and batch norm and the head add a few more roundings per layer.
    Measured here (128/96 px, 8 images): relative L2 error of the logits 0.3% (MobileNetV3) and 0.6%
    (ResNet-50), argmax agreeing on 100% and 99.4% of the pixels; the bounds, 3% and 97%, leave
    room for other CPUs' kernels while failing on a wrong dtype, layout or missing autocast
    (random logits agree on about 1/6 of the pixels)."""
    images, _masks = batch(4, 64)
    model = to_channels_last(model_with_statistics(backbone, images))
    images = to_channels_last(images)
    with torch.inference_mode():
        reference = model(images)["out"]
        with autocast(CPU, torch.bfloat16):
            logits = model(images)["out"]
    assert logits.dtype == torch.bfloat16
    error = float((logits.float() - reference).norm() / reference.norm())
    agree = float((logits.argmax(1) == reference.argmax(1)).float().mean())
    assert error < 0.03 and agree > 0.97, (error, agree)


@needs_bf16
def test_bf16_train_step_loss_is_close_to_fp32():
    """The loss is computed in fp32 from bf16 logits: within 1% of fp32's (measured 0.1%)."""
    images, masks = batch(4, 48)
    model = to_channels_last(without_dropout(model_with_statistics("mobilenet_v3_large", images).train()))
    loss_fn = build_loss("cross_entropy")
    losses = {}
    for precision in (None, torch.bfloat16):
        copied = copy.deepcopy(model)
        losses[precision] = float(train_step(copied, images, masks, loss_fn, torch.optim.SGD(copied.parameters(),
                                                                                              lr=0.1), 0.0, CPU,
                                             precision))
    assert losses[torch.bfloat16] == pytest.approx(losses[None], rel=0.01)


STUCK_WORKER = """
import multiprocessing, os, signal, sys, time
import cocoseg.lifecycle
from cocoseg.lifecycle import init_loader_worker, loader_workers

def stuck_worker(ready):
    init_loader_worker(0)
    os.write(ready, b"!")
    time.sleep(600)  # stands in for a worker blocked where the loader's shutdown cannot reach it

if __name__ == "__main__":
    cocoseg.lifecycle.WORKER_EXIT_GRACE_S = 1.0
    loader_workers(int(sys.argv[1]))  # what the loaders call; with 0 workers it registers nothing
    ready, told = os.pipe()
    worker = multiprocessing.get_context("fork").Process(target=stuck_worker, args=(told,), daemon=True)
    worker.start()
    os.close(told)  # the worker's now: a worker that died before it wrote leaves an end of file
    print(worker.pid, flush=True)
    os.read(ready, 1)  # its init has run
    os.kill(worker.pid, signal.SIGTERM)  # Slurm's SIGTERM, or the loader's own terminate(): ignored
    worker.join(0.5)
    assert worker.is_alive()
    print("exiting", flush=True)
    sys.exit(143)
"""


@pytest.mark.slow
def test_a_stuck_loader_worker_cannot_hang_the_exit(tmp_path):
    """A worker ignores SIGTERM (it is the main process's to handle), so multiprocessing's exit, which sends
    SIGTERM and then waits without limit, would hang on a stuck one: loaders' workers are killed at exit. The
    control (no loader workers, so no reaper), run alongside, hangs until its worker is killed."""
    (tmp_path / "job.py").write_text(STUCK_WORKER)
    # Each job leads a process group of its own, its forked worker a member: on the way out, killing what is left
    # of the groups never hits a process that reused a dead worker's pid.
    jobs = {reaped: subprocess.Popen([sys.executable, "job.py", "2" if reaped else "0"], cwd=tmp_path,
                                     stdout=subprocess.PIPE, text=True, start_new_session=True)
            for reaped in (True, False)}
    try:
        workers = {}
        for reaped, job in jobs.items():
            workers[reaped] = int(job.stdout.readline())
            assert job.stdout.readline() == "exiting\n"  # its worker outlived the SIGTERM
        assert jobs[True].wait(timeout=30) == 143
        assert not group_members(jobs[True].pid)  # its worker was killed at exit, not left to init
        with pytest.raises(subprocess.TimeoutExpired):
            jobs[False].wait(timeout=2)  # the control: hung, 2 s after the reaped job ended ...
        os.kill(workers[False], signal.SIGKILL)  # its parent, hung, has not reaped it: the pid is still its
        assert jobs[False].wait(timeout=30) == 143  # ... on its stuck worker
    finally:
        for job in jobs.values():
            # A group with a member left (its leader unreaped, or a worker) keeps its id: it cannot be another's.
            if job.returncode is None or group_members(job.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(job.pid, signal.SIGKILL)
            job.wait()


FORKED_AFTER_OPENCV = """
import multiprocessing, sys
import cv2, numpy as np
from cocoseg.lifecycle import init_loader_worker, loader_workers

image = np.random.rand(1500, 1500, 3).astype(np.float32)

def worker():
    init_loader_worker(0)
    cv2.GaussianBlur(image, (9, 9), 0)  # an augmentation's OpenCV call
    sys.exit(0 if cv2.getNumThreads() == 1 else f"OpenCV runs {cv2.getNumThreads()} threads in a worker")

if __name__ == "__main__":
    cv2.setNumThreads(2)
    cv2.GaussianBlur(image, (9, 9), 0)  # this process's OpenCV pool has run
    loader_workers(2)
    process = multiprocessing.get_context("fork").Process(target=worker)
    process.start()
    process.join(20)
    alive = process.is_alive()
    process.kill()
    sys.exit(f"the worker hung (OpenCV threads: {cv2.getNumThreads()})" if alive else process.exitcode)
"""


@pytest.mark.slow
def test_loader_workers_forked_after_opencv_ran_do_not_hang(tmp_path):
    """Setting OpenCV's threads inside a forked worker hung it once the parent's pool had run: they are set
    before the fork, and the worker runs OpenCV on one thread."""
    result = run_script(tmp_path, FORKED_AFTER_OPENCV)
    assert result.returncode == 0, result.stderr


SIGTERM_WHILE_WORKERS_START = """
import os, signal
import torch
from cocoseg.lifecycle import init_loader_worker, loader_workers, started_workers

def signalled_before_its_init(worker_id):
    os.kill(os.getpid(), signal.SIGTERM)  # the job's SIGTERM, arriving before the worker's init has run
    init_loader_worker(worker_id)

def batches(start):
    options = {**loader_workers(1), "worker_init_fn": signalled_before_its_init}
    return sum(len(batch) for batch in start(torch.utils.data.DataLoader([torch.zeros(8)] * 4, batch_size=2,
                                                                         **options)))

if __name__ == "__main__":
    torch.multiprocessing.set_start_method("spawn")  # as in a spawned DDP rank: the workers are forked all the same
    print(batches(started_workers), flush=True)
    try:
        print(batches(iter))  # the control: without the block
    except Exception as failed:
        print("control:", failed)
"""


@pytest.mark.slow
def test_a_sigterm_while_loader_workers_start_does_not_kill_them(tmp_path):
    result = run_script(tmp_path, SIGTERM_WHILE_WORKERS_START)
    assert result.returncode == 0, result.stderr[-2000:]
    held, bare = result.stdout.splitlines()
    assert held == "4"
    assert bare.startswith("control:") and "exited unexpectedly" in bare, bare  # the control: killed as it started
