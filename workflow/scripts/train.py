from pathlib import Path

from cocoseg.logs import logged
from cocoseg.train import TrainSettings, train, train_distributed

gpus = int(getattr(snakemake.resources, "gpu", 0) or 0)
arguments = (snakemake.input.manifest, Path(snakemake.input.manifest).parents[1], Path(snakemake.output.model).parent,
             snakemake.params.classes, TrainSettings(**snakemake.params.settings), snakemake.wildcards.variant,
             snakemake.params.run_name, snakemake.threads)
with logged(snakemake.log[0]):
    if gpus > 1:
        train_distributed(gpus, *arguments, cache_dir=Path(snakemake.input.cache).parent, log_file=snakemake.log[0])
    else:
        train(*arguments, cache_dir=Path(snakemake.input.cache).parent)
