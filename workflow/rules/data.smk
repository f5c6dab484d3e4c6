# Data: the embedded synthetic set, VOC/ADE downloads, per-run step split lists.

_ROOT_TO_DATASET = {spec.root: name for name, spec in SOURCES.items()}


rule synthesize:
    output:
        f"{DATA_ROOT}/synthetic/manifest.json",
    log:
        "logs/data/synthesize.log",
    conda:
        ENV
    threads: 2
    params:
        args=lambda wc: quoted(
            [
                "--seed",
                config.get("synthetic", {}).get("seed", 0),
                "--train",
                config.get("synthetic", {}).get("n_train", 1000),
                "--val",
                config.get("synthetic", {}).get("n_val", 300),
                "--size",
                config.get("synthetic", {}).get("size", 96),
            ]
        ),
        out=lambda wc, output: os.path.dirname(output[0]),
    shell:
        "python -m lgkd_core synthesize --out {params.out:q} {params.args} "
        "--workers {threads} > {log:q} 2>&1"


rule download:
    output:
        f"{DATA_ROOT}/{{root}}/.done",
    log:
        "logs/data/download_{root}.log",
    wildcard_constraints:
        root="|".join(_ROOT_TO_DATASET),
    retries: 2
    conda:
        ENV
    resources:
        runtime=240,
    params:
        args=lambda wc: quoted(
            ["--dataset", _ROOT_TO_DATASET[wc.root]]
            + [
                a
                for name, url in (
                    config.get("downloads", {}).get(_ROOT_TO_DATASET[wc.root]) or {}
                ).items()
                for a in ("--source", f"{name}={url}")
            ]
        ),
        data_root=lambda wc, output: Path(output[0]).parent.parent,
    shell:
        "python -m lgkd_core download {params.args} --data-root {params.data_root:q} > {log:q} 2>&1"


# Downloads run where Snakemake runs (cluster nodes often have no internet; a retry resumes the
# .part), and so do the cheap data steps (the synthetic set, the split lists): localrules.
localrules:
    synthesize,
    download,
    download_pretrained,
    prepare_splits,


# The In-Place ABN ImageNet ResNet-101 that step 0 starts from (pretrained: iabn).
rule download_pretrained:
    output:
        f"{DATA_ROOT}/pretrained/{P.IABN_FILE}",
    log:
        "logs/data/download_pretrained.log",
    retries: 2
    conda:
        ENV
    resources:
        runtime=60,
    params:
        args=lambda wc: quoted(
            a
            for key, flag in (("url", "--source"), ("md5", "--md5"))
            if (config.get("downloads", {}).get("pretrained") or {}).get(key)
            for a in (flag, config["downloads"]["pretrained"][key])
        ),
        data_root=lambda wc, output: Path(output[0]).parent.parent,
    shell:
        "python -m lgkd_core download-pretrained --data-root {params.data_root:q} {params.args} "
        "> {log:q} 2>&1"


# One folder of image lists per dataset, task (class order) and overlap mode, for every run.
rule prepare_splits:
    input:
        data=lambda wc: data_marker(wc.dataset),
    output:
        directory("results/_splits/{dataset}/{task}-{mode}"),
    log:
        "logs/_splits/{dataset}/{task}-{mode}.log",
    wildcard_constraints:
        dataset="|".join(DATASETS),
        task=r"[A-Za-z0-9_.-]+",
        mode="overlap|disjoint",
    conda:
        ENV
    threads: 2
    params:
        data_root=lambda wc, input: Path(input.data).parent.parent,
    shell:
        "python -m lgkd_core prepare --dataset {wildcards.dataset} --task {wildcards.task} "
        "--{wildcards.mode} --data-root {params.data_root:q} --out-dir {output:q} "
        "--workers {threads} > {log:q} 2>&1"
