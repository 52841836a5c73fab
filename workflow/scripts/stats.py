from cocoseg.data.stats import write_stats
from cocoseg.logs import logged

with logged(snakemake.log[0]):
    write_stats(snakemake.input.manifest, snakemake.params.classes, snakemake.output.table,
                snakemake.output.table_html, snakemake.output.images_figure, snakemake.output.pixels_figure)
