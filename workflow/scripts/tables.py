from cocoseg.logs import logged
from cocoseg.plots import write_tables

with logged(snakemake.log[0]):
    write_tables(list(snakemake.input.metrics), list(snakemake.input.training), snakemake.params.classes,
                 snakemake.output.summary, snakemake.output.summary_html, snakemake.output.per_class,
                 snakemake.output.per_class_html)
