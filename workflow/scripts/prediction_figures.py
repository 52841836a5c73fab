from pathlib import Path

from cocoseg.logs import logged
from cocoseg.plots import variant_figures

with logged(snakemake.log[0]):
    variant_figures(snakemake.wildcards.variant, snakemake.input.manifest, snakemake.params.run_dir,
                    Path(snakemake.input.evaluation).parent, snakemake.params.classes, snakemake.params.sample_size,
                    snakemake.params.worst, snakemake.params.seed, snakemake.output.sample, snakemake.output.worst)
