from pathlib import Path

from cocoseg.lifecycle import claimed_gpus
from cocoseg.logs import logged
from cocoseg.train import train, train_distributed
from cocoseg.variants import run_settings

gpus = int(getattr(snakemake.resources, "gpu", 0) or 0)
# params hold the settings that change results; the execution ones (num_workers, ...) come from the config.
settings = run_settings(snakemake.config, snakemake.wildcards.variant, snakemake.params.settings)
arguments = (snakemake.input.manifest, snakemake.params.run_dir, Path(snakemake.output.model).parent,
             snakemake.params.classes, settings, snakemake.wildcards.variant, snakemake.params.run_name,
             snakemake.threads)
with logged(snakemake.log[0]), claimed_gpus(gpus):  # a local run's concurrent jobs each on GPUs of their own
    if gpus > 1:
        train_distributed(gpus, *arguments, cache_dir=Path(snakemake.input.cache).parent, log_file=snakemake.log[0])
    else:
        train(*arguments, cache_dir=Path(snakemake.input.cache).parent)
