from pathlib import Path

from cocoseg.cache import build_cache
from cocoseg.logs import logged

with logged(snakemake.log[0]):
    build_cache(snakemake.input.manifest, snakemake.params.run_dir,
                Path(snakemake.output.record).parent, int(snakemake.wildcards.size), snakemake.threads)
