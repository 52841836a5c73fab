"""Every result path has one source, cocoseg.paths: the workflow's outputs are the paths it names, the CLI's
defaults are the same files, and no rule, rule script or cli.py writes a path of the layout by hand."""

import re
import subprocess
import sys

import pytest
import yaml
from conftest import REPO

import cocoseg.compare
import cocoseg.deployment
import cocoseg.evaluate
import cocoseg.export
import cocoseg.train
from cocoseg.categories import class_set_name
from cocoseg.cli import build_parser
from cocoseg.config import validate_config
from cocoseg.paths import ResourcePaths, RunPaths, html_of
from cocoseg.variants import expand_variants, grid_seeds, settings_for

DEMO = REPO / "config" / "demo.yaml"
CONFIG = validate_config(yaml.safe_load(DEMO.read_text()))
RUN = RunPaths.of(CONFIG["run"])
VARIANT, SEED = expand_variants(CONFIG)[0], grid_seeds(CONFIG)[0]

# A path of the layout written by hand: a root, a layout folder inside a path or joined to one with /,
# a relative path that starts with one, or a folder found by counting parents.
FOLDERS = "models|cache|data|deploy|provenance|logs|benchmarks|tables|figures|evaluation"
HAND_WRITTEN = re.compile(rf'results/|resources/|/({FOLDERS})/|/ *"({FOLDERS})"|"({FOLDERS})/'
                          r'|\.parents\[|["/]best\.pt"')


def hand_written(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if HAND_WRITTEN.search(line)]


def checked_files():
    return [REPO / "Snakefile", REPO / "src" / "cocoseg" / "cli.py",
            *sorted((REPO / "workflow" / "rules").glob("*.smk")), *sorted((REPO / "workflow" / "scripts").glob("*.py"))]


@pytest.mark.parametrize("line", [
    'manifest=f"{RUN}/data/manifest.csv",',
    'log: f"{RUN}/logs/synth.log"',
    'mask_dirs=[f"data/masks/{shard}" for shard in MASK_SHARDS],',
    "run_dir = Path(f\"results/{config['run']}\")",
    'RES = f"resources/{name}"',
    "Path(snakemake.input.manifest).parents[1]",
    'run_dir / "models" / name / "best.pt"',
    'out / "tables/comparison.csv"',
])
def test_the_check_finds_a_path_written_by_hand(line):
    """The lines this project had before cocoseg.paths: the check below would have found each."""
    assert hand_written(line) == [line]


@pytest.mark.parametrize("path", checked_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_rule_script_or_cli_writes_a_path_by_hand(path):
    assert path.is_file()
    assert not hand_written(path.read_text()), f"{path.relative_to(REPO)}: take these paths from cocoseg.paths"


def named_outputs(config: dict) -> set[str]:
    """Every file the demo's workflow makes, as cocoseg.paths names it."""
    run, res = RunPaths.of(config["run"]), ResourcePaths.of(config["dataset"]["name"])
    variants, seeds = expand_variants(config), grid_seeds(config)
    runs = [(variant, seed) for variant in variants for seed in seeds]
    tables = [run.class_distribution, run.summary, run.per_class_iou, run.comparison, run.deployment]
    class_set = class_set_name(config["dataset"]["classes"])
    return {
        *(res.served(a) for a in ("images", "annotations")), *(res.archive(a) for a in ("images", "annotations")),
        res.annotations, res.images(class_set), res.images_listing(class_set),
        run.selected, run.rejected, run.instances, run.manifest, run.splits,
        *(path for shard in range(config["masks"]["shards"]) for path in (run.mask_counts(shard), run.masks(shard))),
        *(path for size in {settings_for(config, v).image_size for v in variants}
          for path in (run.cache_record(size), *run.cache_arrays(size))),
        *(path for r in runs for path in (run.best(*r), run.training_metrics(*r), run.training_summary(*r),
                                          run.evaluation_metrics(*r), run.confusion(*r), run.per_image(*r),
                                          run.per_image_confusion(*r), run.predictions(*r))),
        *tables, *map(html_of, tables), run.comparison_per_class,
        run.class_images, run.class_pixels, run.training_curves, run.per_class_iou_figure, run.confusion_figure,
        run.forest, run.power, *(path for v in variants for path in (run.prediction_sample(v),
                                                                     run.worst_predictions(v))),
        run.onnx_model, run.sidecar, run.provenance_config, run.provenance_table,
    }


@pytest.fixture(scope="module")
def workflow_outputs(tmp_path_factory):
    """Each output file of the demo's plan and the rule that makes it (``snakemake --summary``, nothing runs)."""
    result = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
                             str(tmp_path_factory.mktemp("plan")), "--configfile", str(DEMO), "--summary"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    rows = [line.split("\t") for line in result.stdout.splitlines()[1:]]
    return {row[0]: row[2] for row in rows}


def test_the_workflow_makes_exactly_the_files_the_paths_module_names(workflow_outputs):
    assert set(workflow_outputs) == named_outputs(CONFIG)
    # The layout itself, spelled out once here as an independent reference.
    model = f"results/demo/models/{VARIANT}/seed{SEED}"
    assert workflow_outputs["results/demo/data/manifest.csv"] == "split"
    assert workflow_outputs[f"{model}/best.pt"] == "train"
    assert workflow_outputs[f"{model}/evaluation/per_image_confusion.npz"] == "evaluate"
    assert workflow_outputs["results/demo/cache/64px/cache.json"] == "cache"
    assert workflow_outputs["results/demo/data/masks/1"] == "masks"
    assert workflow_outputs["resources/synthetic-demo/archives/images.zip"] == "download"


def test_a_manifest_names_its_run_only_when_it_is_a_runs_data_manifest():
    assert RunPaths.of_manifest("elsewhere/run7/data/manifest.csv") == RunPaths("elsewhere/run7")
    with pytest.raises(ValueError, match="manifest.csv is not a run's data/manifest.csv, .* with --run-dir"):
        RunPaths.of_manifest("elsewhere/manifest.csv")


class Called(Exception):
    """Raised by a stand-in library function, carrying what the command passed it."""


def capture(monkeypatch, module, name):
    def record(*args, **kwargs):
        raise Called(args, kwargs)

    monkeypatch.setattr(module, name, record)


def command_call(*argv):
    """What ``python -m cocoseg *argv`` passes the library function it calls."""
    args = build_parser().parse_args(list(argv))
    with pytest.raises(Called) as called:
        args.func(args)
    return called.value.args


def test_cli_train_defaults_are_the_train_rules_paths(monkeypatch, workflow_outputs):
    capture(monkeypatch, cocoseg.train, "train")
    args, kwargs = command_call("train", "--configfile", str(DEMO), "--variant", VARIANT)
    manifest, run_dir, out_dir = args[:3]
    assert (manifest, run_dir, out_dir) == (RUN.manifest, RUN.root, RUN.model_dir(VARIANT, SEED))
    assert workflow_outputs[f"{out_dir}/best.pt"] == "train" and workflow_outputs[manifest] == "split"
    assert workflow_outputs[f"{kwargs['cache_dir']}/cache.json"] == "cache"
    assert kwargs["cache_dir"] == RUN.cache_dir(settings_for(CONFIG, VARIANT).image_size)
    # Another run's manifest: that run's folder; --run-dir: the folder named.
    args, kwargs = command_call("train", "--configfile", str(DEMO), "--variant", VARIANT,
                                "--manifest", "other/run/data/manifest.csv")
    assert args[1:3] == ("other/run", f"other/run/models/{VARIANT}/seed{SEED}")
    args, _ = command_call("train", "--configfile", str(DEMO), "--variant", VARIANT, "--run-dir", "there/")
    assert args[:3] == ("there/data/manifest.csv", "there", f"there/models/{VARIANT}/seed{SEED}")


def test_cli_compare_reads_and_writes_the_compare_rules_files(monkeypatch, workflow_outputs):
    capture(monkeypatch, cocoseg.compare, "compare")
    (metrics, training, confusions, *_), _ = command_call("compare", "--configfile", str(DEMO))
    assert {workflow_outputs[path] for path in metrics + confusions} == {"evaluate"}
    assert {workflow_outputs[path] for path in training} == {"train"}
    assert len(metrics) == len(expand_variants(CONFIG)) * len(grid_seeds(CONFIG))


def test_cli_export_and_deployment_defaults_are_their_rules_outputs(monkeypatch, workflow_outputs):
    capture(monkeypatch, cocoseg.deployment, "export_verified")
    (checkpoint, onnx_path, run, manifest, run_dir, *_), _ = command_call(
        "export", "--configfile", str(DEMO), "--variant", VARIANT)
    assert workflow_outputs[str(checkpoint)] == "train" and workflow_outputs[str(onnx_path)] == "export"
    assert (run, manifest, run_dir) == ("demo", RUN.manifest, RUN.root)
    capture(monkeypatch, cocoseg.deployment, "write_deployment")
    monkeypatch.setattr(cocoseg.export, "read_sidecar", lambda path: {"provenance": {"checkpoint": "best.pt"}})
    (model, _, manifest, run_dir, table, table_html, *_), _ = command_call("deployment", "--configfile", str(DEMO))
    assert workflow_outputs[model] == "export" and (manifest, run_dir) == (RUN.manifest, RUN.root)
    assert workflow_outputs[table] == workflow_outputs[table_html] == "deployment"
    args, _ = command_call("deployment", "--configfile", str(DEMO), "--out-dir", "out")
    assert args[4:6] == ("out/deployment.csv", "out/deployment.html")


def test_cli_evaluate_takes_the_run_of_its_manifest_or_the_one_named(monkeypatch):
    capture(monkeypatch, cocoseg.evaluate, "evaluate")
    base = ("evaluate", "--checkpoint", "best.pt", "--out-dir", "out")
    args, _ = command_call(*base, "--manifest", "results/demo/data/manifest.csv")
    assert args[2] == "results/demo"
    args, _ = command_call(*base, "--manifest", "mine.csv", "--run-dir", "results/demo")
    assert args[2] == "results/demo"
    args = build_parser().parse_args([*base, "--manifest", "mine.csv"])
    with pytest.raises(ValueError, match="mine.csv is not a run's data/manifest.csv"):
        args.func(args)
