from cocoseg.deployment import write_deployment
from cocoseg.export import read_sidecar
from cocoseg.logs import logged

with logged(snakemake.log[0]):
    export = snakemake.config["export"]
    write_deployment(snakemake.input.model, read_sidecar(snakemake.input.model)["provenance"]["checkpoint"],
                     snakemake.input.manifest, snakemake.params.run_dir, snakemake.output.table,
                     snakemake.output.table_html, export["batch_size"], export["timing_seconds"], snakemake.threads)
