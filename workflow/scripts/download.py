from cocoseg.data.download import download
from cocoseg.logs import logged

with logged(snakemake.log[0]):
    download(snakemake.params.url, snakemake.output[0], snakemake.params.sha256, snakemake.params.retries,
             timeout=snakemake.params.timeout)
