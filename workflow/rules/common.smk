import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

# The library, for this file. Rule scripts find it through workflow/scripts/cocoseg, a link to
# src/cocoseg: Snakemake puts a script's folder on its sys.path, in the venv and in conda envs alike.
sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from cocoseg.categories import class_set_name
from cocoseg.config import ConfigError, validate_config
from cocoseg.paths import ResourcePaths, RunPaths, html_of
from cocoseg.provenance import git_commit
from cocoseg.variants import expand_variants, grid_seeds, settings_for, tracked_settings

try:
    config.update(validate_config(config))
except ConfigError as e:
    raise WorkflowError(str(e)) from None

# Every path of the run and of its dataset's resources: cocoseg.paths.
RUN = RunPaths.of(lookup(dpath="run", within=config))
RES = ResourcePaths.of(lookup(dpath="dataset/name", within=config))
SOURCE = config["dataset"]["source"]
CLASSES = config["dataset"]["classes"]


def archive_url(archive):
    """The URL of an archive; a synthetic dataset is served from its own folder."""
    if SOURCE == "synthetic":
        return Path(RES.served(archive)).resolve().as_uri()
    return lookup(dpath=f"dataset/download/{archive}/url", within=config)


def archive_sha256(archive):
    if SOURCE == "synthetic":
        return None
    return lookup(dpath=f"dataset/download/{archive}/sha256", within=config, default=None)


def served_archive(wildcards):
    """The synthetic archive that the download rule fetches, so Snakemake makes it first."""
    return RES.served(wildcards.archive) if SOURCE == "synthetic" else []


def annotations_json():
    if SOURCE == "local":
        return config["dataset"]["annotations"]
    return RES.annotations


# Extracted images, one folder per class set: runs with the same classes share it, and it is a declared output.
CLASS_SET = class_set_name(CLASSES)
EXTRACTED = RES.images(CLASS_SET)


def images_dir():
    if SOURCE == "local":
        return config["dataset"]["images_dir"]
    return EXTRACTED


def extracted_listing():
    return [] if SOURCE == "local" else RES.images_listing(CLASS_SET)


MASK_SHARDS = list(range(config["masks"]["shards"]))

VARIANTS = expand_variants(config)
SEEDS = grid_seeds(config)
if config["evaluate"]["reference"] not in VARIANTS:
    raise WorkflowError(f"evaluate.reference: {config['evaluate']['reference']!r} is not a variant of the grid "
                        f"({', '.join(VARIANTS)}); set evaluate.reference to one of them")


def runs(pattern):
    """``pattern`` (with {variant} and {seed}) for every training run: each variant once per seed."""
    return expand(pattern, variant=VARIANTS, seed=SEEDS)


def variant_cache(wildcards):
    """The training cache at the variant's image size."""
    return RUN.cache_record(settings_for(config, wildcards.variant).image_size)


def run_folder(wildcards):
    """params.run_dir: the manifest's mask paths are relative to the run folder. A function, as Snakemake's lint
    asks of a param that prefixes the outputs; both come from RUN, so they cannot disagree."""
    return RUN.root


def train_settings(wildcards):
    """The run's settings that change its results, as a plain dict: Snakemake reruns a job whose params change."""
    return tracked_settings(config, wildcards.variant, int(wildcards.seed))


wildcard_constraints:
    variant="|".join(VARIANTS),
    seed=r"\d+",

GIT_COMMIT = git_commit(workflow.basedir)
