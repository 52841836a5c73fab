from pathlib import Path

from cocoseg.logs import logged
from cocoseg.train import TrainSettings, train

with logged(snakemake.log[0]):
    train(snakemake.input.manifest, Path(snakemake.input.manifest).parents[1], Path(snakemake.output.model).parent,
          snakemake.params.classes, TrainSettings(**snakemake.params.settings), snakemake.wildcards.variant,
          snakemake.params.run_name, snakemake.threads)
