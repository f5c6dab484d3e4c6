# One training job per (run, step); step s reads step s-1's model.pt as its frozen teacher.
# Epoch checkpoints live in state/ beside model.pt, passed through params (not declared):
# Snakemake deletes declared outputs before a job, and the state must survive a failed attempt.


rule train:
    input:
        unpack(train_inputs),
    output:
        model="results/{run}/step{step}/model.pt",
    log:
        "logs/{run}/step{step}/train.log",
    wildcard_constraints:
        run=_alternatives(OWN_STEP0),
    conda:
        ENV
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
    params:
        args=train_args,
        nproc=processes_per_node,
        nnodes=_nodes,
    shell:
        # launch starts one process per GPU (torchrun) and gives each threads / processes,
        # less its DataLoader workers, as OMP_NUM_THREADS; it writes train.N.log for attempt N
        # and links train.log to it (Snakemake deletes the declared log before a retry).
        "python -m lgkd_core launch --log {log:q} --nproc-per-node={params.nproc} "
        "--nnodes={params.nnodes} --threads={threads} -- train {params.args}"


# Steps >= 1 of the runs whose step 0 is linked (share_step0) or imported (import_step0): the
# same job as train. A separate rule so that no rule but share_step0 / import_step0 can make
# such a run's step0/model.pt. A SLURM job runs Snakemake with only its own rule allowed; had
# train matched that file too, the job for step 1 would have re-trained step 0 inside itself
# (its record says another rule made the link), over the link.
use rule train as train_incremental with:
    wildcard_constraints:
        run=_alternatives(LINKED_STEP0),
        step=r"[1-9][0-9]*",


# step0_checkpoint: a released step-0 model (a URL or a file) checked against the task and the
# architecture and written as this run's step-0 model.pt; no training. A localrule: the
# URL may need the internet, which compute nodes often lack.
localrules:
    import_step0,


rule import_step0:
    input:
        unpack(import_inputs),
    output:
        "results/{run}/step0/model.pt",
    log:
        "logs/{run}/step0/import.log",
    wildcard_constraints:
        run=_alternatives(IMPORTED),
    conda:
        ENV
    params:
        args=import_args,
    shell:
        "python -m lgkd_core import-step0 {params.args} > {log:q} 2>&1"


# Step 0 is plain cross-entropy for every method: a run whose step-0 recipe another run shares
# gets a relative symbolic link to the shared step-0 run's model and scores. Not a hard link:
# Snakemake touches every output after its job, and touching a hard link would change the shared
# file's time too (its metrics.json would look older than its model.pt and be re-evaluated).
rule share_step0:
    input:
        _shared_step0,
    output:
        "results/{run}/step0/{file}",
    log:
        "logs/{run}/step0/share_{file}.log",
    wildcard_constraints:
        run=_alternatives(SHARED_STEP0),
        file=r"model\.pt|metrics\.json|predictions\.npz",
    conda:
        ENV
    params:
        target=lambda wc, input, output: os.path.relpath(input[0], os.path.dirname(output[0])),
    shell:
        "ln -sfn {params.target:q} {output:q} && echo linked {input:q} > {log:q}"


ruleorder: share_step0 > evaluate
