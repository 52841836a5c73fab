from cocoseg.deployment import chosen_checkpoint, export_verified
from cocoseg.logs import logged

# Batch size and threads come from the config, not params: they change how the job runs, not the model.
with logged(snakemake.log[0]):
    export_verified(chosen_checkpoint(list(snakemake.input.metrics)), snakemake.output.model, snakemake.params.run,
                    snakemake.input.manifest, snakemake.params.run_dir,
                    snakemake.config["export"]["batch_size"], snakemake.threads, snakemake.params.logit_tolerance,
                    snakemake.params.miou_tolerance)
