"""The east pipeline: params grids -> fetch_data -> train -> evaluate -> report.

Run from the repository root:
    snakemake --cores all                                   # the demo grid, locally
    snakemake --cores all --config grids=[params/paper.yaml]
    snakemake --cores all --profile slurm                   # on a SLURM cluster
The rules are in workflow/rules/, the schemas in workflow/schemas/; per-rule resources in
profiles/default/config.yaml (loaded automatically), the SLURM executor in profiles/slurm.
How to run, add rows, recover from failures and version results: docs/pipeline.md.
"""

from snakemake.utils import min_version

min_version("9.0")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        REPORT_FILES,
    localrule: True
