# Tables and plots per run, the mean/std table of sweeps, the summary over experiments, and the
# comparison of every method of a setting with the published numbers. All cheap: run locally.


localrules:
    table,
    sweep_table,
    summary,
    compare,
    html_report,
    share_step0,


rule table:
    input:
        metrics=_metrics,
        models=_models,
        predictions=_predictions,
    output:
        table=report(
            "results/{run}/table.csv",
            category="{run}",
            caption="../report/table.rst",
        ),
        plot=report("results/{run}/miou.png", category="{run}", caption="../report/miou.rst"),
        class_iou=report(
            "results/{run}/class_iou.png",
            category="{run}",
            caption="../report/class_iou.rst",
        ),
        confusion=report(
            "results/{run}/confusion.png",
            category="{run}",
            caption="../report/confusion.rst",
        ),
        predictions=report(
            "results/{run}/predictions.png",
            category="{run}",
            caption="../report/predictions.rst",
        ),
    log:
        "logs/{run}/table.log",
    conda:
        ENV
    params:
        # Snakemake does not rebuild a deleted intermediate file while the files after it are
        # present; recording which models exist makes a deleted model.pt re-run its step, the
        # steps after it and their evaluations (the params trigger).
        models_present=lambda wc: "".join("1" if os.path.exists(m) else "0" for m in _models(wc)),
    shell:
        "python -m lgkd_core report table --metrics {input.metrics:q} --out {output.table:q} "
        "--plot {output.plot:q} --class-iou {output.class_iou:q} "
        "--confusion {output.confusion:q} --predictions {input.predictions:q} "
        "--predictions-png {output.predictions:q} --title {wildcards.run:q} > {log:q} 2>&1"


rule sweep_table:
    input:
        unpack(_members),
    output:
        table=report(
            "results/{sweep}/table.csv",
            category="{sweep}",
            caption="../report/sweep.rst",
        ),
        plot=report("results/{sweep}/miou.png", category="{sweep}", caption="../report/miou.rst"),
    log:
        "logs/{sweep}/sweep_table.log",
    conda:
        ENV
    params:
        members=lambda wc, input: quoted(f"{k}={v}" for k, v in input.items()),
    shell:
        "python -m lgkd_core report sweep --member {params.members} --out {output.table:q} "
        "--plot {output.plot:q} --title {wildcards.sweep:q} > {log:q} 2>&1"


rule summary:
    input:
        unpack(lambda wc: {n: table_of(n) for n in config.get("default_experiments", [])}),
    output:
        report("results/summary.csv", category="summary", caption="../report/summary.rst"),
    log:
        "logs/summary.log",
    conda:
        ENV
    params:
        tables=lambda wc, input: quoted(f"{k}={v}" for k, v in input.items()),
    shell:
        "python -m lgkd_core report summary --table {params.tables} --out {output:q} "
        "> {log:q} 2>&1"


rule compare:
    input:
        unpack(_compare_inputs),
    output:
        table=report(
            "results/{setting}/compare.csv",
            category="{setting}",
            caption="../report/compare.rst",
        ),
        plot=report(
            "results/{setting}/compare.png",
            category="{setting}",
            caption="../report/compare.rst",
        ),
    log:
        "logs/{setting}/compare.log",
    conda:
        ENV
    params:
        args=compare_args,
    shell:
        "python -m lgkd_core compare {params.args} --out {output.table:q} "
        "--plot {output.plot:q} --title {wildcards.setting:q} > {log:q} 2>&1"


# One self-contained page with every default table and figure, grouped by setting and
# experiment, with captions and provenance (`snakemake --report` builds Snakemake's own too).
rule html_report:
    input:
        default_targets(),
    output:
        "results/report.html",
    log:
        "logs/report_html.log",
    conda:
        ENV
    params:
        args=html_report_args,
        captions=Path(workflow.basedir, "workflow", "report"),
    shell:
        "python -m lgkd_core report html --results results --out {output:q} "
        "--captions {params.captions:q} {params.args} > {log:q} 2>&1"
