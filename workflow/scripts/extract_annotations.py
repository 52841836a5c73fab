from cocoseg.data.extract import extract_member
from cocoseg.logs import logged

with logged(snakemake.log[0]):
    extract_member(snakemake.input[0], snakemake.params.member, snakemake.output[0])
