from cocoseg.compare import compare
from cocoseg.logs import logged
from cocoseg.plots import forest_plot, power_curves, write_comparison

with logged(snakemake.log[0]):
    reference = snakemake.params.reference
    table, per_class = compare(list(snakemake.input.metrics), list(snakemake.input.training),
                               list(snakemake.input.per_image_confusion), snakemake.params.classes, reference)
    write_comparison(table, per_class, reference, snakemake.output.table, snakemake.output.table_html,
                     snakemake.output.per_class)
    forest_plot(table, per_class, reference, snakemake.output.forest)
    power_curves(table, reference, snakemake.output.power)
