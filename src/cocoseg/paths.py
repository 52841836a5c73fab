"""Where a run's results and a dataset's resources live: the one place that names them.

The rules, the rule scripts and ``python -m cocoseg`` take every path from here. A method whose arguments
are left out gives the Snakemake pattern (``{variant}``, ``{seed}``, ``{size}``, ``{shard}``, ``{archive}``);
given values, the path itself. Paths are strings, exactly as the rules declare them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

RESULTS = "results"
RESOURCES = "resources"
MASKS = "data/masks"  # relative to the run folder; the workflow's masks are in one folder per shard below it


def html_of(table: str) -> str:
    """A table's HTML rendering, beside its CSV."""
    return table.removesuffix(".csv") + ".html"


@dataclass(frozen=True)
class RunPaths:
    """Everything one run makes, under ``root`` (``results/<run>`` in the workflow)."""

    root: str

    @classmethod
    def of(cls, run: str) -> RunPaths:
        return cls(f"{RESULTS}/{run}")

    @classmethod
    def of_manifest(cls, manifest: str | Path) -> RunPaths:
        """The run whose ``data/manifest.csv`` this is (the manifest's mask paths are relative to the run)."""
        path = Path(manifest)
        if (path.parent.name, path.name) != ("data", "manifest.csv"):
            raise ValueError(f"{manifest} is not a run's data/manifest.csv, so it names no run folder; "
                             "name the folder its mask paths are relative to with --run-dir")
        return cls(str(path.parent.parent))

    def _path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    # The data stage.
    @property
    def selected(self) -> str:
        return self._path("data/selected.csv")

    @property
    def rejected(self) -> str:
        return self._path("data/rejected.csv")

    @property
    def instances(self) -> str:
        return self._path("data/instances.json")

    def mask_counts(self, shard: int | str = "{shard}") -> str:
        return self._path(f"data/shards/pixels-{shard}.csv")

    @staticmethod
    def mask_folder(shard: int | str = "{shard}") -> str:
        """A shard's masks, relative to the run folder: the manifest's ``mask_path`` starts with it."""
        return f"{MASKS}/{shard}"

    def masks(self, shard: int | str = "{shard}") -> str:
        return self._path(self.mask_folder(shard))

    @property
    def manifest(self) -> str:
        return self._path("data/manifest.csv")

    @property
    def splits(self) -> str:
        return self._path("data/splits.csv")

    # The training cache, one per image size.
    def cache_dir(self, size: int | str = "{size}") -> str:
        return self._path(f"cache/{size}px")

    def cache_record(self, size: int | str = "{size}") -> str:
        return f"{self.cache_dir(size)}/cache.json"

    def cache_arrays(self, size: int | str = "{size}") -> list[str]:
        return [f"{self.cache_dir(size)}/{split}_{kind}.npy" for split in ("train", "val")
                for kind in ("images", "masks")]

    # One training run (a variant and a seed) and its evaluation.
    def model_dir(self, variant: str = "{variant}", seed: int | str = "{seed}") -> str:
        return self._path(f"models/{variant}/seed{seed}")

    def best(self, variant: str = "{variant}", seed: int | str = "{seed}") -> str:
        return f"{self.model_dir(variant, seed)}/best.pt"

    def training_metrics(self, variant: str = "{variant}", seed: int | str = "{seed}") -> str:
        return f"{self.model_dir(variant, seed)}/metrics.csv"

    def training_summary(self, variant: str = "{variant}", seed: int | str = "{seed}") -> str:
        return f"{self.model_dir(variant, seed)}/training.json"

    @staticmethod
    def best_beside(evaluation_metrics: str | Path) -> Path:
        """The ``best.pt`` of the run whose ``evaluation/metrics.json`` this is."""
        return Path(evaluation_metrics).parent.parent / "best.pt"

    @staticmethod
    def evaluation_metrics_beside(best: str | Path) -> Path:
        """The ``evaluation/metrics.json`` of the run whose ``best.pt`` this is."""
        return Path(best).parent / "evaluation" / "metrics.json"

    def evaluation_dir(self, variant: str = "{variant}", seed: int | str = "{seed}") -> str:
        return f"{self.model_dir(variant, seed)}/evaluation"

    def evaluation_metrics(self, variant: str = "{variant}", seed: int | str = "{seed}") -> str:
        return f"{self.evaluation_dir(variant, seed)}/metrics.json"

    def confusion(self, variant: str = "{variant}", seed: int | str = "{seed}") -> str:
        return f"{self.evaluation_dir(variant, seed)}/confusion.csv"

    def per_image(self, variant: str = "{variant}", seed: int | str = "{seed}") -> str:
        return f"{self.evaluation_dir(variant, seed)}/per_image.csv"

    def per_image_confusion(self, variant: str = "{variant}", seed: int | str = "{seed}") -> str:
        return f"{self.evaluation_dir(variant, seed)}/per_image_confusion.npz"

    def predictions(self, variant: str = "{variant}", seed: int | str = "{seed}") -> str:
        return f"{self.evaluation_dir(variant, seed)}/predictions"

    # Tables (each with its HTML: html_of) and figures across runs.
    @property
    def class_distribution(self) -> str:
        return self._path("tables/class_distribution.csv")

    @property
    def summary(self) -> str:
        return self._path("tables/summary.csv")

    @property
    def per_class_iou(self) -> str:
        return self._path("tables/per_class_iou.csv")

    @property
    def comparison(self) -> str:
        return self._path("tables/comparison.csv")

    @property
    def comparison_per_class(self) -> str:
        return self._path("tables/comparison_per_class.csv")

    @property
    def deployment(self) -> str:
        return self._path("tables/deployment.csv")

    @property
    def class_images(self) -> str:
        return self._path("figures/class_images.png")

    @property
    def class_pixels(self) -> str:
        return self._path("figures/class_pixels.png")

    @property
    def training_curves(self) -> str:
        return self._path("figures/training_curves.png")

    @property
    def per_class_iou_figure(self) -> str:
        return self._path("figures/per_class_iou.png")

    @property
    def confusion_figure(self) -> str:
        return self._path("figures/confusion.png")

    @property
    def forest(self) -> str:
        return self._path("figures/forest.png")

    @property
    def power(self) -> str:
        return self._path("figures/power.png")

    def prediction_sample(self, variant: str = "{variant}") -> str:
        return self._path(f"figures/predictions/{variant}.png")

    def worst_predictions(self, variant: str = "{variant}") -> str:
        return self._path(f"figures/worst/{variant}.png")

    # The exported model, provenance, logs and benchmarks.
    @property
    def onnx_model(self) -> str:
        return self._path("deploy/model.onnx")

    @property
    def sidecar(self) -> str:
        return self._path("deploy/model.json")

    @property
    def provenance_config(self) -> str:
        return self._path("provenance/config.yaml")

    @property
    def provenance_table(self) -> str:
        return self._path("provenance/provenance.html")

    def log(self, job: str) -> str:
        return self._path(f"logs/{job}.log")

    def benchmark(self, job: str) -> str:
        return self._path(f"benchmarks/{job}.tsv")


@dataclass(frozen=True)
class ResourcePaths:
    """Downloads and extracted files of one dataset, under ``root`` (``resources/<dataset.name>``), shared by runs."""

    root: str

    @classmethod
    def of(cls, dataset: str) -> ResourcePaths:
        return cls(f"{RESOURCES}/{dataset}")

    def served(self, archive: str = "{archive}") -> str:
        """A synthetic dataset's archive, which the download rule fetches like a remote one."""
        return f"{self.root}/served/{archive}.zip"

    def archive(self, archive: str = "{archive}") -> str:
        return f"{self.root}/archives/{archive}.zip"

    @property
    def annotations(self) -> str:
        return f"{self.root}/annotations/instances.json"

    def images(self, class_set: str) -> str:
        """The extracted images of one class set (``categories.class_set_name``)."""
        return f"{self.root}/images/{class_set}"

    def images_listing(self, class_set: str) -> str:
        return f"{self.images(class_set)}.csv"
