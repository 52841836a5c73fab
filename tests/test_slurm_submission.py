"""What the Slurm profile asks of Slurm, checked without Slurm, and the real-Slurm test's targets planned.

The dry runs of the real-Slurm test's targets are part of `make test`. The submission through the
stand-ins takes about a minute (the plugin polls job states at growing intervals), so it runs with
the real-Slurm test in `make test-slurm` (marker ``slurm``), which needs no root for it.

Stand-ins for sbatch, srun, squeue, sacct, scontrol and sinfo (tests/standin_slurm.py) record every
call and run the jobs on this machine, so a training job with ``train.gpus: 2`` goes through
``--profile profiles/slurm`` and snakemake-executor-plugin-slurm exactly as on a cluster: the test
checks the resources it asked for (one task, two GPUs, ``train.threads`` CPUs) and that one process
started and launched the two ranks itself (gloo on the CPU standing in for NCCL).
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import slurm_study
import yaml
from conftest import REPO, SNAKEMAKE, tiny_config
from standin_slurm import calls, install, options

VARIANT = slurm_study.VARIANTS[0]
THREADS = 2


def snakemake(*args, env=None, timeout=600):
    result = subprocess.run([*SNAKEMAKE, *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=timeout)
    assert result.returncode == 0, (f"snakemake {' '.join(args)} failed:\n"
                                    f"{result.stdout[-4000:]}\n{result.stderr[-8000:]}")
    return result


@pytest.mark.parametrize("name, targets", [("study", slurm_study.study_targets),
                                           ("preemption", slurm_study.preemption_targets)])
def test_the_real_slurm_tests_targets_are_planned(tmp_path, name, targets):
    """tests/test_slurm.py runs rarely (root, real Slurm): its targets must still exist in the workflow."""
    config = getattr(slurm_study, f"{name}_config")()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    out = snakemake(*targets(config), "-n", "--directory", str(tmp_path), "--configfile",
                    str(tmp_path / "config.yaml")).stdout
    runs = len(config["grid"]["variants"]) * len(config["grid"]["seeds"])
    assert re.search(rf"^train\s+{runs}$", out, re.MULTILINE), out


@pytest.fixture(scope="module")
def submitted(tmp_path_factory):
    """A 2-GPU training job and its evaluation, submitted through the Slurm profile to the stand-ins."""
    root = tmp_path_factory.mktemp("standin")
    config = tiny_config("standin", "synthetic-standin", num_images=30, max_images=24, shards=1, variant=VARIANT,
                         seed=2)
    config["train"].update(image_size=32, epochs=1, gpus=2, threads=THREADS, batch_size=4, base_batch_size=4,
                           overrides={})
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    common = ["--directory", str(root), "--configfile", str(root / "config.yaml")]
    snakemake("results/standin/cache/32px/cache.json", "--cores", "2", *common)  # the data, on this machine
    env = install(root / "bin", root / "slurm")
    model = root / "results/standin/models" / VARIANT / "seed0"
    snakemake(str((model / "evaluation/metrics.json").relative_to(root)), "--profile", str(REPO / "profiles/slurm"),
              *common, "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
              "--seconds-between-status-checks", "1", "--latency-wait", "5", env=env)
    return root, model, config, calls(root / "slurm")


def job_calls(recorded: list[dict], rule: str) -> tuple[dict[str, str], list[dict]]:
    """The sbatch options of ``rule``'s one job, and the srun calls made inside it."""
    batches = [call for call in recorded if call["command"] == "sbatch"
               and options(call["argv"])[0].get("--comment", "").startswith(f"rule_{rule}_")]
    assert len(batches) == 1, batches
    print(f"sbatch of {rule}: {' '.join(arg for arg in batches[0]['argv'] if not arg.startswith('--wrap'))}")
    steps = [call for call in recorded if call["command"] == "srun" and call["job_id"] == batches[0]["job_id"]]
    return options(batches[0]["argv"])[0], steps


def assert_one_task(sbatch: dict[str, str], steps: list[dict], gpus: int) -> None:
    assert sbatch.get("--gpus") == str(gpus) and "--gres" not in sbatch, sbatch
    assert sbatch.get("--cpus-per-task") == str(THREADS) and "--cpus-per-gpu" not in sbatch, sbatch
    # No option that makes Slurm start more than one task: sbatch's default is one.
    assert sbatch.get("--ntasks", sbatch.get("-n", "1")) == "1", sbatch
    assert "--ntasks-per-gpu" not in sbatch and "--ntasks-per-node" not in sbatch and sbatch.get("--nodes", "1") == "1"
    assert len(steps) == 1 and steps[0]["tasks"] == 1, steps
    step = options(steps[0]["argv"])[0]
    assert step.get("--gpus") == str(gpus) and step.get("--cpus-per-task") == str(THREADS), step
    # Nor on the job step: any of these would make a real srun start one task per GPU or node.
    assert step.get("-n", step.get("--ntasks", "1")) == "1", step
    assert not {"--ntasks-per-gpu", "--ntasks-per-node", "--gpus-per-task"} & set(step), step
    assert step.get("-N", step.get("--nodes", "1")) == "1" and sbatch.get("-N", "1") == "1", (step, sbatch)


@pytest.mark.slurm
def test_two_gpu_training_is_one_task_with_two_gpus_that_starts_two_ranks(submitted):
    root, model, config, recorded = submitted
    sbatch, steps = job_calls(recorded, "train")
    assert_one_task(sbatch, steps, gpus=2)
    assert sbatch["--mem"] == str(config["train"]["mem_mb"]) and sbatch["-t"] == str(config["train"]["runtime"])
    assert json.loads((model / "training.json").read_text())["world_size"] == 2
    log = (root / f"results/standin/logs/train_{VARIANT}_seed0.log").read_text()
    assert "[rank 0]" in log and "[rank 1]" in log


@pytest.mark.slurm
def test_evaluation_is_one_task_with_one_gpu(submitted):
    _root, model, _config, recorded = submitted
    sbatch, steps = job_calls(recorded, "evaluate")
    assert_one_task(sbatch, steps, gpus=1)
    assert (model / "evaluation/metrics.json").exists()
