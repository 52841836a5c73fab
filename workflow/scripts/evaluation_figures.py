from cocoseg.logs import logged
from cocoseg.plots import confusion_heatmaps, per_class_iou_bars

with logged(snakemake.log[0]):
    per_class_iou_bars(snakemake.input.per_class, snakemake.output.per_class)
    confusion_heatmaps(dict(zip(snakemake.params.variants, snakemake.input.confusion)), snakemake.output.confusion)
