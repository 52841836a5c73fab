"""After a crash, what the README says to type gives the uninterrupted run's results.

Real `snakemake` runs of a one-variant grid: a job's own process SIGKILLed (an out-of-memory
killer, a failed node), and the whole Snakemake process group SIGKILLed (a power loss). The
declared outputs of a long job appear only when it completes, so Snakemake never finds one of an
unfinished job, and only its lock is left to clear.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import yaml
from conftest import REPO, SNAKEMAKE, processes, snakemake, tiny_config

from cocoseg.checkpoint import load_checkpoint
from cocoseg.train import TIMING_COLUMNS

RUN = "crash"
VARIANT = "mobilenet_v3_large-cross_entropy-uniform"
POLL_SECONDS = 0.01
PATIENCE_SECONDS = 300


def prepare(root: Path) -> list[str]:
    """The tiny study's config in ``root``; returns the arguments of the command a user would type."""
    # COCO-sized images: the mask and cache jobs work long enough to be killed part way.
    config = tiny_config(RUN, "synthetic-crash", num_images=40, max_images=30, shards=2, variant=VARIANT, seed=5,
                         sizes=[[640, 480], [480, 640]])
    config["train"].update(image_size=32, epochs=4, overrides={})
    root.mkdir(parents=True, exist_ok=True)
    (root / "crash.yaml").write_text(yaml.safe_dump(config))
    return ["--cores", "2", "--directory", str(root), "--configfile", str(root / "crash.yaml"), "--until", "train"]


def start(args: list[str], log: Path, niceness: int = 0) -> subprocess.Popen:
    """Snakemake in a process group of its own, as a terminal would start it (``niceness``: its priority, and its
    jobs')."""
    with open(log, "w") as out:
        return subprocess.Popen(["nice", "-n", str(niceness), *SNAKEMAKE, *args], cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for child, process in processes().items():
        children.setdefault(process.parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def script_jobs(pid: int, script: str) -> list[int]:
    """Processes under ``pid`` running workflow/scripts/<script>.py (Snakemake runs a copy of it)."""
    jobs = []
    for child in descendants(pid):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg.endswith(f".{script}.py".encode()) for arg in argv):
            jobs.append(child)
    return jobs


def kill_when(process: subprocess.Popen, log: Path, ready: Callable[[], bool], script: str | None = None) -> None:
    """Once ``ready()``, SIGKILL the running <script> jobs, or (no script) the whole process group."""
    deadline = time.monotonic() + PATIENCE_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"snakemake ended before the kill:\n{log.read_text()}")
        jobs = script_jobs(process.pid, script) if script else []
        if (jobs or not script) and ready():
            if script:
                for job in jobs:
                    with contextlib.suppress(ProcessLookupError):  # it ended in the meantime
                        os.kill(job, signal.SIGKILL)
            else:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)
            return
        time.sleep(POLL_SECONDS)
    os.killpg(process.pid, signal.SIGKILL)
    raise AssertionError(f"gave up waiting to kill {script or 'snakemake'}:\n{log.read_text()}")


def interrupted(args: list[str], log: Path, ready: Callable[[], bool], script: str | None = None) -> None:
    """Start the command, kill as ``kill_when`` says; the run must have failed."""
    process = start(args, log)
    try:
        kill_when(process, log, ready, script)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode != 0, log.read_text()


def run_dir(root: Path) -> Path:
    return root / "results" / RUN


def model_dir(root: Path) -> Path:
    """The training run's folder: the one that holds checkpoints/."""
    found = [path.parent for path in (run_dir(root) / "models").rglob("checkpoints")]
    assert len(found) == 1, found
    return found[0]


def epoch_done(root: Path, epoch: int) -> Callable[[], bool]:
    """The training log reports ``epoch``: its checkpoint and everything else of that epoch are written."""
    logs = run_dir(root) / "logs"
    return lambda: any(f" epoch {epoch}: " in path.read_text() for path in logs.glob("train_*.log"))


def metrics(root: Path) -> pd.DataFrame:
    return pd.read_csv(model_dir(root) / "metrics.csv").drop(columns=list(TIMING_COLUMNS))


def files(folder: Path) -> dict[str, bytes]:
    """Every file in ``folder``, hidden ones (temporary files) included, with its bytes."""
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def assert_cut_short(root: Path) -> None:
    """The kill landed while training: a checkpoint to resume from, and epochs still to train."""
    last = model_dir(root) / "checkpoints" / "last.pt"
    assert last.exists() and load_checkpoint(last)["epoch"] < 4


def assert_resumed(root: Path, reference: Path) -> None:
    assert any("resuming" in path.read_text() for path in (run_dir(root) / "logs").glob("train_*.log"))
    pd.testing.assert_frame_equal(metrics(root), metrics(reference))
    assert len(metrics(root)) == 4


@contextlib.contextmanager
def alongside(args: list[str], log: Path) -> Iterator[subprocess.Popen]:
    """Snakemake running beside the test at the lowest priority, so that it takes the CPU the test leaves idle and
    does not slow the jobs the test kills part way; stopped with whatever its group still runs on the way out,
    however the test ends (its leader not yet reaped, the group id cannot have been reused)."""
    process = start(args, log, niceness=19)
    try:
        yield process
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def finished(process: subprocess.Popen, log: Path) -> None:
    try:
        process.wait(timeout=PATIENCE_SECONDS)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running after {PATIENCE_SECONDS} s:\n{log.read_text()}") from None
    assert process.returncode == 0, log.read_text()


def assert_data_stage_redone_exactly(root: Path, reference: Path) -> None:
    """Masks, shards, manifest and cache are the uninterrupted run's, byte for byte."""
    data, reference_data = run_dir(root) / "data", run_dir(reference) / "data"
    shards = sorted(path.name for path in (reference_data / "masks").iterdir())  # one folder per shard
    assert sorted(path.name for path in (data / "masks").iterdir()) == shards and shards
    for shard in shards:
        assert files(data / "masks" / shard) == files(reference_data / "masks" / shard)
    assert files(data / "shards") == files(reference_data / "shards")
    assert files(data) == files(reference_data)  # manifest.csv, splits.csv, selected.csv, instances.json ...
    assert files(run_dir(root) / "cache" / "32px") == files(run_dir(reference) / "cache" / "32px")


def test_killed_jobs_and_a_power_loss_each_resume_with_what_the_readme_says(tmp_path):
    """One run, crashed four times, each time resumed by the command the README says to type:

    1. a mask shard's job SIGKILLed part way, then 2. the cache build's: both are redone from scratch;
    3. the training job's own process SIGKILLed after epoch 1 (an out-of-memory killer, a failed node): the
       same command resumes it from last.pt;
    4. that run's whole Snakemake process group SIGKILLed after epoch 2 (a power loss): --unlock with the same
       arguments, then the same command, resumes again.
    The data stage and the training metrics are the uninterrupted run's, which runs alongside at the lowest
    priority (each kill waits for a file that says its job is part way, and the checks after it fail, never pass,
    should a job finish first).
    """
    root, reference = tmp_path / "crashed", tmp_path / "uninterrupted"
    args = prepare(root)
    with alongside(prepare(reference), tmp_path / "uninterrupted.log") as uninterrupted:
        masks_dir = run_dir(root) / "data" / "masks"
        cache_dir = run_dir(root) / "cache" / "32px"
        interrupted(args, tmp_path / "masks.log", lambda: any(masks_dir.glob(".*.partial/*.png")), script="masks")
        # Killed part way: a shard's masks in progress are left behind, and its declared outputs do not exist.
        assert any(masks_dir.glob(".*.partial/*.png"))
        assert len(list((run_dir(root) / "data" / "shards").glob("pixels-*.csv"))) < 2
        interrupted(args, tmp_path / "cache.log", lambda: any(cache_dir.glob(".*.tmp")), script="cache")
        assert any(cache_dir.glob(".*.tmp"))  # left behind, for the next build to remove
        assert not (cache_dir / "cache.json").exists() and not (cache_dir / "train_images.npy").exists()

        interrupted(args, tmp_path / "killed.log", epoch_done(root, 1), script="train")
        finished(uninterrupted, tmp_path / "uninterrupted.log")
    assert_data_stage_redone_exactly(root, reference)
    assert_cut_short(root)
    interrupted(args, tmp_path / "power_loss.log", epoch_done(root, 2))  # kill -9 of the process group
    assert_cut_short(root)
    train_log = "".join(path.read_text() for path in (run_dir(root) / "logs").glob("train_*.log"))
    assert re.search(r"resuming .*: epoch 2, step 0", train_log), train_log  # from the first kill's last.pt
    # Snakemake marked the training's declared outputs incomplete when it started the job: none may exist.
    assert not any((model_dir(root) / name).exists() for name in ("best.pt", "metrics.csv", "training.json"))
    locked = snakemake(*args, check=False)
    assert locked.returncode != 0 and "LockException" in locked.stdout + locked.stderr
    snakemake(*args, "--unlock")
    snakemake(*args)
    assert_resumed(root, reference)
    assert_data_stage_redone_exactly(root, reference)
