from pathlib import Path

from cocoseg.evaluate import evaluate
from cocoseg.lifecycle import claimed_gpus
from cocoseg.logs import logged

# Execution settings come from the config, not params: Snakemake reruns a job whose params change, and
# these do not change its results.
with logged(snakemake.log[0]), claimed_gpus(int(getattr(snakemake.resources, "gpu", 0) or 0)):
    evaluate(snakemake.input.model, snakemake.input.manifest, snakemake.params.run_dir,
             Path(snakemake.output.metrics).parent, snakemake.config["train"]["num_workers"],
             snakemake.config["evaluate"]["batch_size"], snakemake.threads, snakemake.config["train"]["device"],
             engine=snakemake.params.engine)
