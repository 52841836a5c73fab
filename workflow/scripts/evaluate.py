from pathlib import Path

from cocoseg.evaluate import evaluate
from cocoseg.logs import logged

with logged(snakemake.log[0]):
    evaluate(snakemake.input.model, snakemake.input.manifest, Path(snakemake.input.manifest).parents[1],
             Path(snakemake.output.metrics).parent, snakemake.params.num_workers, snakemake.params.batch_size,
             snakemake.threads, snakemake.params.device)
