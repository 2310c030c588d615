"""Training: one job per cell, in the cell's content-addressed run directory.

Rerun safety: a train job's only input is the dataset marker (by existence, not age), its
params a path, its code fixed. It writes cell.json from the grid just before training; the
file holds no row name, and its semantic content is what names the directory. So renaming
a row, or changing a non-semantic setting, retrains nothing, while a semantic change
names a different run directory.
"""


rule train:
    # `east train` resumes from the run directory's checkpoints: exit 75 (pre-empted,
    # checkpoint saved) or a SLURM time limit fails the attempt and a retry continues.
    input:
        # ancient: re-fetching a dataset (a newer marker) retrains nothing.
        data=ancient(data_marker),
    output:
        summary=f"{RUN}/summary.json",
        model=f"{RUN}/model.pt",
    log:
        f"results/logs/train/{CELL_LOG}.log",
    benchmark:
        f"results/benchmarks/train/{CELL_LOG}.tsv"
    retries: 3
    params:
        run_dir=run_dir,
    run:
        write_cell_json(wildcards)
        shell(
            "{EAST} train {params.run_dir}/cell.json --out {params.run_dir} >> {log} 2>&1"
        )
