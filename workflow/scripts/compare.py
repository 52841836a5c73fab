from cocoseg.compare import compare
from cocoseg.logs import logged
from cocoseg.plots import forest_plot, write_comparison

with logged(snakemake.log[0]):
    table, per_class = compare(list(snakemake.input.metrics), list(snakemake.input.training),
                               list(snakemake.input.per_image_confusion), snakemake.params.classes,
                               snakemake.params.reference, snakemake.params.resamples, snakemake.params.seed)
    write_comparison(table, per_class, snakemake.params.reference, snakemake.params.resamples,
                     snakemake.output.table, snakemake.output.table_html, snakemake.output.per_class)
    forest_plot(table, per_class, snakemake.params.reference, snakemake.output.forest)
