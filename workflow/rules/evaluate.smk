"""Evaluation: test accuracy, per-layer density, FLOPs and effective sparsity of a cell.

Its input is the training summary only: a diverged run has no model.pt, and `east
evaluate` writes its metrics.json (`"status": "diverged"`, no accuracy) without one.
"""


rule evaluate:
    input:
        summary=f"{RUN}/summary.json",
    output:
        f"{RUN}/metrics.json",
    log:
        f"{LOGS_ROOT}/evaluate/{CELL_LOG}.log",
    benchmark:
        f"results/benchmarks/evaluate/{CELL_LOG}.tsv"
    params:
        run_dir=run_dir,
    run:
        with job_attempt("evaluate", params.run_dir, log[0]):
            shell("{EAST} evaluate {params.run_dir} >> {log} 2>&1")
