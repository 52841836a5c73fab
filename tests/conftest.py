"""Shared fixtures: a small synthetic COCO-format dataset, and running a rule script without Snakemake."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
# OpenVINO's import sends a telemetry event (a DNS lookup, then HTTPS) and writes ~/intel/ unless its consent file
# says no or CI=true: tests, and the jobs they start, must not touch the network.
os.environ["CI"] = "true"
warnings.filterwarnings("ignore", category=DeprecationWarning, module="pycocotools")

from cocoseg.data.synth import generate, unpack  # noqa: E402
from cocoseg.device import use_threads  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# Slow: real Snakemake runs, dry runs and lint included (test_workflow.py, test_study_run.py, test_crash.py), the
# benchmarks, and tests marked slow in their files (training runs, several processes). `make test-fast` leaves
# them out.
SLOW_FIXTURES = {"data_run", "full_run"}
SLOW_FILES = {"test_crash.py", "test_benchmarks.py", "test_workflow.py", "test_study_run.py"}
# pytest-xdist (`-n auto` in pyproject.toml) runs a file's tests on one worker, so that its module fixtures are
# computed once, and the files that use the tiny study's session fixtures (SLOW_FIXTURES) on one worker too. The
# files with the suite's long runs are handed out first, so that the short ones fill in around them.
TINY_STUDY_FILES = ("test_study_run.py", "test_workflow.py")
FIRST_FILES = (*TINY_STUDY_FILES, "test_train.py", "test_crash.py")
MAX_WORKERS = 4
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
# Each worker's share of the cores, for torch's and OpenCV's pools in the tests' own training and evaluation in the
# pytest processes and for the tiny study's Snakemake runs, so that the workers together ask for no more cores than
# there are.
THREADS = max(1, CORES // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
MISPLACED = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: real Snakemake runs, training, several processes (make test-fast "
                                       "leaves them out)")


def work_unit(nodeid: str) -> str:
    """What one xdist worker runs whole: a test's file, or the tiny study's files together."""
    path = nodeid.split("::", 1)[0]
    return "tiny study" if Path(path).name in TINY_STUDY_FILES else path


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """As many workers as cores (at most MAX_WORKERS), and no more than the work units of the files named."""
    files_only = all(arg.split("::", 1)[0].endswith(".py") for arg in config.args)
    units = {work_unit(arg) for arg in config.args}
    return max(1, min(MAX_WORKERS, CORES, len(units) if config.args and files_only else MAX_WORKERS))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        uses_tiny_study = bool(SLOW_FIXTURES & set(getattr(item, "fixturenames", ())))
        if uses_tiny_study or item.path.name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)
        if uses_tiny_study and item.path.name not in TINY_STUDY_FILES:
            item.stash[MISPLACED] = (f"{item.nodeid} uses the tiny study's fixtures: add its file to TINY_STUDY_FILES "
                                     "(tests/conftest.py), so that pytest-xdist runs it on the worker that has them")
    first = {name: rank for rank, name in enumerate(FIRST_FILES)}
    items.sort(key=lambda item: first.get(item.path.name, len(first)))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if MISPLACED in item.stash:  # failed here, not in collection: an error there reaches xdist's user unreadable
        pytest.fail(item.stash[MISPLACED], pytrace=False)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """With xdist's default distribution: a work unit per test file, the tiny study's files making one. (xdist's
    own grouping by mark, ``--dist loadgroup``, does not group on pytest 9.2: pytest-xdist issue 1386.)"""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByFile(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return ByFile(config, log)


CLASSES = ["person", "bicycle", "car", "motorcycle", "airplane"]
TRAINING_STACK = ("torch", "torchvision", "albumentations", "cv2", "pycocotools")


def without_training_stack(folder: Path) -> dict[str, str]:
    """An environment whose Python cannot import the training stack: stand-ins that raise, first on PYTHONPATH."""
    for name in TRAINING_STACK:
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "__init__.py").write_text('raise ImportError("blocked for the test")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}
    for name in TRAINING_STACK:
        probe = subprocess.run([sys.executable, "-c", f"import {name}"], env=env, capture_output=True, text=True)
        assert "blocked for the test" in probe.stderr, f"the stand-in for {name} is not the one imported"
    return env


@pytest.fixture(scope="session", autouse=True)
def worker_threads() -> None:
    """THREADS for torch and OpenCV in the process that runs the tests (set here, not at import: xdist's controller
    runs none, and need not import torch)."""
    use_threads(THREADS)


@pytest.fixture(autouse=True)
def no_weight_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test that builds a model with the config's default, ImageNet weights, fails here instead of downloading
    them (tests never touch the network; pass weights_backbone="none")."""
    import torchvision.models._api  # where torchvision's weights call it from

    def refuse(url: str, *args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"a test tried to download {url}: build the model with weights_backbone='none'")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", refuse)


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """120 synthetic images: the zips, and the extracted images folder and instances JSON."""
    root = tmp_path_factory.mktemp("synthetic")
    images_zip, annotations_zip = root / "images.zip", root / "annotations.zip"
    generate(images_zip, annotations_zip, num_images=120, seed=7)
    images_dir, annotations = unpack(images_zip, annotations_zip, root)
    return SimpleNamespace(root=root, images_zip=images_zip, annotations_zip=annotations_zip,
                           images_dir=images_dir, annotations=annotations)


@pytest.fixture(scope="session")
def run_dir(synthetic: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder of 30 of the synthetic images: selected, masked, split 0.6 / 0.2 / 0.2 (data/manifest.csv)."""
    from cocoseg.data.masks import build_masks
    from cocoseg.data.select import select_images
    from cocoseg.data.split import split_manifest

    run = tmp_path_factory.mktemp("run")
    data = run / "data"
    select_images(synthetic.annotations, synthetic.images_dir, CLASSES, data, max_images=30, seed=0)
    build_masks(data / "instances.json", data / "masks", data / "counts.csv")
    split_manifest(data / "selected.csv", [data / "counts.csv"], CLASSES, data / "manifest.csv", data / "splits.csv",
                   {"train": 0.6, "val": 0.2, "test": 0.2}, images_dir=synthetic.images_dir)
    return run


SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]


def snakemake(*args: str, cwd: Path = REPO, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def planned_jobs(out: str) -> dict[str, int]:
    """The dry run's (first) job stats table: rule name -> count, ``total`` included."""
    lines = out.split("Job stats:", 1)[1].splitlines()
    jobs = {}
    for row in (line.split() for line in lines[3:]):
        if len(row) != 2 or not row[1].isdigit():
            break
        jobs[row[0]] = int(row[1])
    return jobs


def tiny_config(run: str, dataset: str, num_images: int, max_images: int, shards: int, variant: str | None = None,
                **synthetic: Any) -> dict[str, Any]:
    """config/demo.yaml scaled down for a test's own run: a synthetic dataset of its own (``synthetic`` sets its
    seed or sizes), ``shards`` mask shards, wandb off; with ``variant``, a grid of that variant's first seed,
    which is then the reference."""
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    config["run"] = run
    config["dataset"].update(name=dataset, max_images=max_images)
    config["dataset"]["synthetic"].update(num_images=num_images, **synthetic)
    config["masks"]["shards"] = shards
    if variant:
        config["grid"].update(variants=[variant], seeds=config["grid"]["seeds"][:1])
        config["evaluate"]["reference"] = variant
    config["wandb"]["mode"] = "disabled"
    return config


@pytest.fixture(scope="session")
def data_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`snakemake data` of a tiny synthetic study (80 images, 3 mask shards), its config <root>/tiny.yaml: the data
    stage that test_workflow.py checks and test_study_run.py and the two-rank run start from."""
    root = tmp_path_factory.mktemp("workflow")
    config = tiny_config("tiny", "synthetic-tiny", num_images=100, max_images=80, shards=3, seed=3)
    # The study: two MobileNetV3 variants (uniform and oversampled) x 2 seeds. ResNet-50 trains in the real-Slurm
    # study (slurm_study.py), the benchmarks' smoke runs and test_device.py.
    config["grid"]["variants"] = ["mobilenet_v3_large-cross_entropy-uniform",
                                  "mobilenet_v3_large-focal_tversky-oversample"]
    config["train"].update(image_size=96, epochs=6, overrides={})
    config["export"] = {"timing_seconds": 0.3, "batch_size": 4}  # the deployment table: a smoke test here
    (root / "tiny.yaml").write_text(yaml.safe_dump(config))
    snakemake("data", "--cores", str(THREADS), "--directory", str(root), "--configfile", str(root / "tiny.yaml"))
    return root


class _Named(list):
    """A list whose items are also attributes, like Snakemake's input/output/params."""

    def __init__(self, **items: Any) -> None:
        super().__init__(items.values())
        self.__dict__.update(items)


def run_rule_script(name: str, *, input: dict | None = None, output: dict | None = None,
                    params: dict | None = None, wildcards: dict | None = None, log: str,
                    threads: int = 1, resources: dict | None = None, config: dict | None = None) -> None:
    """Run workflow/scripts/<name>.py with a stand-in for the ``snakemake`` object."""
    snakemake = SimpleNamespace(
        input=_Named(**(input or {})), output=_Named(**(output or {})), params=_Named(**(params or {})),
        wildcards=_Named(**(wildcards or {})), log=_Named(log=log), threads=threads,
        resources=_Named(**(resources or {})), config=config or {},
    )
    runpy.run_path(str(REPO / "workflow" / "scripts" / f"{name}.py"), init_globals={"snakemake": snakemake})


def processes() -> dict[int, SimpleNamespace]:
    """Every process now: pid -> its state, parent pid and process group, from /proc/<pid>/stat (read after the
    command name, which may hold spaces and parentheses)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, parent, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except OSError:  # it ended meanwhile
            continue
        found[int(stat.parent.name)] = SimpleNamespace(state=state, parent=int(parent), group=int(group))
    return found



def group_members(group: int, live: bool = False) -> list[int]:
    """The processes of process group ``group``; with ``live``, a zombie (ended, not yet reaped) is left out. A
    group with a member, zombie or not, keeps its id: no other group can have it."""
    return [pid for pid, process in processes().items()
            if process.group == group and not (live and process.state == "Z")]

def run_script(folder: Path, source: str, *args: str) -> subprocess.CompletedProcess:
    """``source`` saved as ``folder/job.py`` and run in a Python process of its own (signals, forks, exits)."""
    (folder / "job.py").write_text(source)
    return subprocess.run([sys.executable, "job.py", *args], cwd=folder, capture_output=True, text=True, timeout=120)
