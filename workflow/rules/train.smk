"""Training: one job per cell, in the cell's content-addressed run directory.

Rerun safety: a train job's only input is the dataset marker (by existence, not age), its
params a path, its code fixed. It writes cell.json from the grid just before training; the
file holds no row name, and its semantic content is what names the directory. So renaming
a row, or changing a non-semantic setting, retrains nothing, while a semantic change
names a different run directory.

The output is summary.json alone: a run that diverges (non-finite loss) is a result, with
`"status": "diverged"` in its summary and no model.pt, and is not trained again.
"""

# Attempts after the first resume a pre-empted or timed-out run (exit 75, or killed by
# SLURM's time limit): they continue from its checkpoints. Any other failure is permanent:
# east.pipeline.attempt writes FAILED.json and the remaining attempts stop at once.
TRAIN_RETRIES = 3


rule train:
    input:
        # ancient: re-fetching a dataset (a newer marker) retrains nothing.
        data=ancient(data_marker),
    output:
        summary=f"{RUN}/summary.json",
    log:
        f"{LOGS_ROOT}/train/{CELL_LOG}.log",
    benchmark:
        f"results/benchmarks/train/{CELL_LOG}.tsv"
    retries: TRAIN_RETRIES
    resources:
        # GPUs of this job: the cell's train.gpus (params/defaults.yaml per dataset, or
        # the row); more than one runs one rank per GPU on the node (east train --ranks).
        gpu=train_gpus,
        # Not a request: which attempt this job is, for the retry policy in the run block
        # (Snakemake passes `attempt` to resource functions only).
        east_attempt=lambda wildcards, attempt: attempt,
    params:
        run_dir=run_dir,
        ranks=lambda wildcards, resources: max(1, resources.gpu),
    run:
        with job_attempt(
            "train",
            params.run_dir,
            log[0],
            resources.east_attempt,
            attempts=TRAIN_RETRIES + 1,
        ):
            write_cell_json(wildcards)
            # --if-locked wait: when SLURM requeues a job that Snakemake also retried, the
            # second copy waits for the first and then finds the cell done or resumes it.
            # The trap: SLURM signals every process of the job step, this shell included;
            # it waits for east to checkpoint, log and exit (75), so the log is complete
            # and the exit code is east's (a trap, unlike an ignored signal, is not
            # inherited by east).
            shell(
                "trap true TERM USR1; "
                "{EAST} train {params.run_dir}/cell.json --out {params.run_dir}"
                " --if-locked wait --ranks {params.ranks} >> {log} 2>&1"
            )
