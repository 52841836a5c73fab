from cocoseg.logs import logged
from cocoseg.plots import training_curves

with logged(snakemake.log[0]):
    training_curves(dict(zip(snakemake.params.runs, snakemake.input)), snakemake.output[0])
