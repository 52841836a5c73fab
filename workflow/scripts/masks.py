from cocoseg.data.masks import build_masks
from cocoseg.logs import logged

with logged(snakemake.log[0]):
    build_masks(snakemake.input.instances, snakemake.output.masks, snakemake.output.counts,
                snakemake.params.crowd, int(snakemake.wildcards.shard), snakemake.params.num_shards)
