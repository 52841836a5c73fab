from cocoseg.data.synth import generate
from cocoseg.logs import logged

with logged(snakemake.log[0]):
    generate(snakemake.output.images, snakemake.output.annotations, snakemake.params.num_images,
             snakemake.params.seed, snakemake.params.sizes)
