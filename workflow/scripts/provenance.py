from cocoseg.logs import logged
from cocoseg.provenance import write_provenance

with logged(snakemake.log[0]):
    write_provenance(snakemake.params.config, snakemake.params.commit, snakemake.output.config,
                     snakemake.output.table)
