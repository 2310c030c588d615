"""Datasets: `east fetch` downloads and checksums (CIFAR), verifies the folder (ImageNet)
or only marks the embedded set (digits); its marker file is what training waits for."""


rule fetch_data:
    # On a cluster this runs where Snakemake runs (login nodes have the network).
    output:
        "{root}/{dataset}/FETCHED.json",
    log:
        "{root}/{dataset}/fetch.log",
    localrule: True
    run:
        shell("{EAST} fetch {wildcards.dataset} --root {wildcards.root} > {log} 2>&1")
