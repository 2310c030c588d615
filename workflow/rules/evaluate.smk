"""Evaluation: test accuracy, per-layer density, FLOPs and effective sparsity of a cell."""


rule evaluate:
    input:
        summary=f"{RUN}/summary.json",
        model=f"{RUN}/model.pt",
    output:
        f"{RUN}/metrics.json",
    log:
        f"results/logs/evaluate/{CELL_LOG}.log",
    benchmark:
        f"results/benchmarks/evaluate/{CELL_LOG}.tsv"
    params:
        run_dir=run_dir,
    run:
        shell("{EAST} evaluate {params.run_dir} > {log} 2>&1")
