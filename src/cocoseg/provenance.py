"""What produced a run: the resolved config, the code's git commit, package versions, the machine."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from cocoseg.io import write_html_table, write_text

PACKAGES = ("cocoseg", "snakemake", "torch", "torchvision", "pycocotools", "albumentations", "numpy", "pandas",
            "pillow", "matplotlib", "wandb", "snakemake-executor-plugin-slurm")


def git_commit(repo: str | Path) -> str:
    """HEAD's commit, with '+dirty' when tracked files differ from it; 'unknown' outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        dirty = git("status", "--porcelain", "--untracked-files=no").strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def device_description() -> dict[str, str]:
    import torch

    info = {"python": platform.python_version(), "platform": platform.platform(),
            "cpu": platform.processor() or platform.machine()}
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
        info["cpu"] = model
    except (OSError, StopIteration):
        pass
    info["cuda"] = (", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
                    if torch.cuda.is_available() else "none (CPU)")
    return info


def write_provenance(config: dict[str, Any], commit: str, config_path: str | Path, table_path: str | Path) -> None:
    """The resolved config as YAML, and one HTML table of commit, versions and machine for the report."""
    write_text(yaml.safe_dump(config, sort_keys=False), config_path)
    rows = [("git commit", commit), *package_versions().items(), *device_description().items()]
    frame = pd.DataFrame(rows, columns=["item", "value"])
    write_html_table(frame, table_path, caption="The code, packages and machine that produced this report. "
                     "Each training job's own device is in models/&lt;variant&gt;/training.json.")
