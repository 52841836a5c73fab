"""GPUs per local job: Snakemake's local executor assigns none, so each job claims its own (no GPU needed)."""

import multiprocessing
import os
import tempfile

import pytest
import yaml
from conftest import CLASSES, REPO, run_rule_script

import cocoseg.lifecycle
import cocoseg.train
from cocoseg.config import validate_config
from cocoseg.lifecycle import claimed_gpus
from cocoseg.variants import tracked_settings


def hold_slots(count, total, lock_dir, report, release):
    with claimed_gpus(count, total, lock_dir) as slots:
        report.put((slots, os.environ["CUDA_VISIBLE_DEVICES"]))
        release.wait(60)


@pytest.fixture
def no_visible_devices(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


@pytest.mark.slow
def test_concurrent_jobs_get_different_gpus_and_the_next_waits(tmp_path, no_visible_devices):
    context = multiprocessing.get_context("fork")  # a job of its own, without a fresh interpreter's imports
    report, release = context.Queue(), context.Event()
    jobs = [context.Process(target=hold_slots, args=(2, 4, tmp_path, report, release)) for _ in range(2)]
    for job in jobs:
        job.start()
    try:
        claims = [report.get(timeout=60) for _ in jobs]
        assert sorted(tuple(slots) for slots, _ in claims) == [(0, 1), (2, 3)]
        assert {visible for _, visible in claims} == {"0,1", "2,3"}
        with pytest.raises(TimeoutError, match="free GPU"), claimed_gpus(1, 4, tmp_path, timeout=0.5):
            pass  # all four held: a third job waits (it tries again after 1 s, then gives up)
    finally:
        release.set()
        for job in jobs:
            job.join(60)
    with claimed_gpus(1, 4, tmp_path) as slots:  # the ended jobs' locks are free again
        assert slots == [0] and os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_a_scheduler_assignment_or_no_gpu_is_left_alone(tmp_path, monkeypatch, no_visible_devices):
    with claimed_gpus(1, 0, tmp_path) as slots:
        assert slots == [] and "CUDA_VISIBLE_DEVICES" not in os.environ
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")  # as Slurm sets it
    with claimed_gpus(1, 4, tmp_path) as slots:
        assert slots == [] and os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    with pytest.raises(ValueError, match="asks for 2 GPUs and this machine has 1"):
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
        with claimed_gpus(2, 1, tmp_path):
            pass


@pytest.mark.slow
@pytest.mark.parametrize("gpus, held, expected", [(1, [0], "1"), (2, [0, 1], "2,3")])
def test_the_train_rule_script_trains_on_the_gpus_it_claimed(tmp_path, monkeypatch, no_visible_devices,
                                                              gpus, held, expected):
    """The train rule's own script on a stand-in four-GPU machine, where another job holds ``held``."""
    monkeypatch.setattr(cocoseg.lifecycle, "machine_gpus", lambda: 4)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # claimed_gpus keeps its lock files in $TMPDIR
    seen = {}

    def record(name):
        return lambda *args, **kwargs: seen.update(entry=name, visible=os.environ["CUDA_VISIBLE_DEVICES"], args=args)

    monkeypatch.setattr(cocoseg.train, "train", record("train"))
    monkeypatch.setattr(cocoseg.train, "train_distributed", record("train_distributed"))
    other_job = multiprocessing.get_context("fork")
    report, release = other_job.Queue(), other_job.Event()
    holder = other_job.Process(target=hold_slots, args=(len(held), 4, tmp_path / f"cocoseg-gpus-{os.getuid()}",
                                                        report, release))
    holder.start()
    try:
        assert report.get(timeout=60)[0] == held
        config = validate_config(yaml.safe_load((REPO / "config" / "demo.yaml").read_text()))
        variant = "mobilenet_v3_large-cross_entropy-uniform"
        run_rule_script("train", input={"manifest": tmp_path / "data" / "manifest.csv",
                                        "cache": tmp_path / "cache" / "cache.json"},
                        output={"model": tmp_path / "model" / "best.pt"},
                        params={"settings": tracked_settings(config, variant, 0), "classes": CLASSES, "run_name": "r",
                                "run_dir": tmp_path},
                        wildcards={"variant": variant, "seed": "0"}, log=str(tmp_path / "train.log"),
                        resources={"gpu": gpus}, config=config)
    finally:
        release.set()
        holder.join(60)
    assert seen["entry"] == ("train" if gpus == 1 else "train_distributed") and seen["visible"] == expected
    assert seen["args"][0] == (gpus if gpus > 1 else tmp_path / "data" / "manifest.csv")  # ranks, or the manifest
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # given back when the job ends
