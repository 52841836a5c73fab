from pathlib import Path

from cocoseg.data.select import select_images
from cocoseg.logs import logged

with logged(snakemake.log[0]):
    select_images(snakemake.input.annotations, snakemake.input.images, snakemake.params.classes,
                  Path(snakemake.output.selected).parent, snakemake.params.max_images, snakemake.params.seed,
                  snakemake.params.crowd, snakemake.threads)
