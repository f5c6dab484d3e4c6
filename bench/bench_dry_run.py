"""Pipeline overhead: wall time of ``snakemake -n`` planning every shipped experiment.

Targets: ``results/<exp>/table.csv`` of every experiment in config.yaml (sweeps included, each
with its members) plus the default target ``all``. Snakemake runs with ``--directory`` in a
temporary folder (no ``.snakemake`` state lands in the repository; nothing exists there, so every
job is planned). Wall time of the whole command, interpreter start and imports included, median
of the runs. Target: under 3 s, printed as the ratio budget / time (>= 1 when under budget).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time

import yaml
from common import REPO, parse_args, print_machine, print_table, ratio_line

BUDGET_S = 3.0


def targets() -> list[str]:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    return [f"results/{name}/table.csv" for name in config["experiments"]] + ["all"]


def run(args: list[str], workdir: str) -> tuple[float, subprocess.CompletedProcess]:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
    cmd += ["--directory", workdir, *args]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    return time.perf_counter() - t0, proc


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    repeats = 1 if args.quick else 5
    print_machine("bench_dry_run: snakemake -n over all shipped experiments")
    goal = targets()
    times = []
    with tempfile.TemporaryDirectory(prefix="bench_dry_run_") as tmp:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import snakemake.api"], check=True)
        t_import = time.perf_counter() - t0
        for _ in range(repeats):
            seconds, proc = run([*goal, "-n", "--quiet", "rules"], tmp)
            if proc.returncode != 0:
                raise SystemExit(f"snakemake -n failed:\n{proc.stderr[-2000:]}")
            times.append(seconds)
    jobs = re.search(r"^total\s+(\d+)", proc.stdout + proc.stderr, re.M)
    n_jobs = int(jobs.group(1)) if jobs else "?"
    median = sorted(times)[len(times) // 2]
    print_table(
        ["what", "seconds"],
        [
            ["python -c 'import snakemake.api' (start-up floor)", t_import],
            [f"snakemake -n: {len(goal)} targets, {n_jobs} jobs (median of {repeats})", median],
        ],
    )
    ratio_line("dry_run_all_experiments", BUDGET_S / median, f"the {BUDGET_S:g} s budget", 1)


if __name__ == "__main__":
    main()
