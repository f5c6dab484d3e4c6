# One training job per (run, step); step s reads step s-1's model.pt as its frozen teacher.
# Epoch checkpoints live in state/ beside model.pt, passed through params (not declared):
# Snakemake deletes declared outputs before a job, and the state must survive a failed attempt.


rule train:
    input:
        unpack(train_inputs),
    output:
        model="results/{run}/step{step}/model.pt",
    params:
        command=train_command,
    log:
        "logs/{run}/step{step}/train.log",
    threads: _cpus
    resources:
        gpu=_gpus,
        cpus_per_gpu=lambda wc: _cpus(wc) // max(1, _gpus(wc)) if _gpus(wc) else 0,
        tasks_per_gpu=0,
        nodes=_nodes,
        mpi=lambda wc: "srun" if _nodes(wc) > 1 else 0,
        tasks=lambda wc: _nodes(wc) if _nodes(wc) > 1 else 1,
        mem_mb=lambda wc: setting(wc, "mem_mb", 4000),
        # A job killed at its time limit resumes from state/ with more time on the next attempt.
        runtime=lambda wc, attempt: setting(wc, "runtime", 60) * attempt,
    conda:
        ENV
    shell:
        "python -m lgkd_core {params.command} > {log:q} 2>&1"
