# cocoseg: COCO subset -> masks -> split -> histograms -> models -> evaluation -> export -> report.
# snakemake --cores 8 --use-conda                         # the study (config/config.yaml)
# snakemake --cores 2 --configfile config/demo.yaml       # synthetic data, CPU minutes
from snakemake.utils import min_version

min_version("9.0")

# --configfile replaces the study's config rather than being merged into it.
if not workflow.config_settings.configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/deploy.smk"


report: "report/workflow.rst"


rule all:
    input:
        rules.data.input,
        rules.results.input,
        rules.provenance.output,
        rules.export.output,
        rules.deployment.output,
    default_target: True
