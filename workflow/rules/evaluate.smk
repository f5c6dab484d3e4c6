# Evaluation of each step's model on the validation images of the classes seen so far.


rule evaluate:
    input:
        model="results/{run}/step{step}/model.pt",
        splits=lambda wc: str(X.splits_dir(*run_of(wc))),
        data=lambda wc: data_marker(run_of(wc)[0].dataset),
    output:
        metrics="results/{run}/step{step}/metrics.json",
        predictions="results/{run}/step{step}/predictions.npz",
    log:
        "logs/{run}/step{step}/evaluate.log",
    conda:
        ENV
    threads: lambda wc: min(setting(wc, "cpus", 1), 4)
    resources:
        gpu=lambda wc: min(setting(wc, "gpus", 0), 1),
        cpus_per_gpu=lambda wc: min(setting(wc, "cpus", 1), 4) if setting(wc, "gpus", 0) else 0,
        tasks_per_gpu=0,
        mem_mb=lambda wc: setting(wc, "mem_mb", 4000),
        runtime=lambda wc, attempt: 60 * attempt,
    params:
        command=lambda wc: quoted(
            ["launch", "--"]
            + X.evaluate_args(*run_of(wc), int(wc.step), Path(DATA_ROOT), Path("results", wc.run))
        ),
    shell:
        "python -m lgkd_core {params.command} > {log:q} 2>&1"
