# lgkd: continual semantic segmentation with Label-Guided Knowledge Distillation.
#   snakemake --cores all                              the embedded default (synthetic, CPU)
#   snakemake --cores all results/voc_15-1/table.csv   one experiment of config.yaml
# Files between rules follow docs/workflow.md; the logic lives in lgkd_core.
import os

from snakemake.utils import min_version, validate

min_version("9.20")


configfile: os.path.join(workflow.basedir, "config.yaml")


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        default_targets(),
        "results/report.html",
