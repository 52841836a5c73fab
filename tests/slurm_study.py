"""The configs and targets of the real-Slurm test (tests/test_slurm.py), shared with `make test`.

The run folders come from the library's own ``cocoseg.paths``, and `make test` plans these exact
targets with a dry run (tests/test_slurm_submission.py), so a change of the layout fails there, not
only in the rarely run real-Slurm test.
"""

from __future__ import annotations

from conftest import tiny_config

from cocoseg.paths import RunPaths

VARIANTS = ["mobilenet_v3_large-cross_entropy-uniform", "resnet50-weighted_cross_entropy-uniform"]
DATASET = "synthetic-slurm"


def _tiny(run: str) -> dict:
    config = tiny_config(run, DATASET, num_images=50, max_images=40, shards=1, variant=VARIANTS[0])
    config["train"].update(image_size=48, epochs=1, overrides={})
    return config


def study_config() -> dict:
    """2 variants (both backbones) x 2 seeds, one epoch each: the whole study through the profile, then its report."""
    config = _tiny("slurm-study")
    config["grid"].update(variants=list(VARIANTS), seeds=[0, 1])
    return config


def preemption_config() -> dict:
    """One run of several epochs, each long enough (seconds) for a SIGTERM to land while it trains."""
    config = _tiny("slurm-preempt")
    config["train"].update(image_size=96, epochs=5, batch_size=4, base_batch_size=4)
    return config


def run_folder(config: dict, variant: str, seed: int) -> str:
    return RunPaths.of(config["run"]).model_dir(variant, seed)


def preemption_targets(config: dict) -> list[str]:
    return [f"{run_folder(config, VARIANTS[0], 0)}/training.json"]


def study_targets(config: dict) -> list[str]:
    """The comparison (it needs every run's training and evaluation) and the data stage's figures."""
    run = RunPaths.of(config["run"])
    return [run.comparison, run.class_images]
