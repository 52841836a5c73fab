from cocoseg.data.split import split_manifest
from cocoseg.logs import logged

with logged(snakemake.log[0]):
    split_manifest(snakemake.input.selected, list(snakemake.input.counts), snakemake.params.classes,
                   snakemake.output.manifest, snakemake.output.splits, dict(snakemake.params.fractions),
                   snakemake.params.seed, snakemake.params.images_dir, list(snakemake.params.mask_dirs))
