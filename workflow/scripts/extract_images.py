from cocoseg.data.extract import extract_images
from cocoseg.logs import logged

with logged(snakemake.log[0]):
    extract_images(snakemake.input.archive, snakemake.input.annotations, snakemake.params.classes,
                   snakemake.output.images, snakemake.output.listing, snakemake.threads)
