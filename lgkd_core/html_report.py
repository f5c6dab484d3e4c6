"""``results/report.html``: every table and figure of a workflow in one self-contained page.

Grouped by setting (its comparison, then each method's run) and by experiment (runs and
sweeps outside settings), then the summary. Each run shows its table, its figures (mIoU per
step, per-class IoU, confusion matrix, predictions) with their captions, and the provenance of
its last step (code version, commit, torch, hosts, world size, wall time). Images are embedded
as data URIs, so the file can be mailed or opened offline; nothing needs a server or script.

Files are found by the workflow's layout: ``<results>/<name>/table.csv``, ``<name>/miou.png``,
``<setting>/compare.csv``, ... A missing file is reported in the page, not an error, so a
partial run still gives a report.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from lgkd_core.io import atomic_write_text

RUN_FIGURES = ("miou", "class_iou", "confusion", "predictions")
# Columns of a run table shown in the page (the per-class IoUs are in class_iou.png).
RUN_COLUMNS = ("step", "classes", "init", "background", "old", "new", "all", "mean_all")
PROVENANCE_KEYS = (
    "lgkd_core",
    "git",
    "torch",
    "cuda",
    "hosts",
    "world_size",
    "threads_per_rank",
    "global_batch",
    "wall_time_s",
)

_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 80em; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; border-bottom: 1px solid #aaa; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0; vertical-align: top; max-width: 100%; }
figure img { max-width: 100%; } figcaption { font-size: 0.8em; max-width: 40em; color: #444; }
.missing { color: #a00; } dl { font-size: 0.8em; } dt { font-weight: bold; float: left;
  clear: left; width: 10em; } dd { margin-left: 11em; }
"""


def read_captions(folder: Path | str | None) -> dict[str, str]:
    """Captions by figure/table kind from the workflow's ``report/*.rst`` files."""
    if folder is None:
        return {}
    return {p.stem: p.read_text() for p in sorted(Path(folder).glob("*.rst"))}


def _caption(captions: Mapping[str, str], kind: str, **wildcards: str) -> str:
    """The caption text as HTML: Snakemake's ``{{ snakemake.wildcards.x }}`` filled in and RST
    literals shown as code."""
    text = captions.get(kind, "")
    text = re.sub(
        r"\{\{\s*snakemake\.wildcards\.(\w+)\s*\}\}",
        lambda m: wildcards.get(m.group(1), m.group(1)),
        text,
    )
    text = html.escape(" ".join(text.split()))
    return re.sub(r"``(.+?)``", r"<code>\1</code>", text)


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _missing(path: Path) -> str:
    return f'<p class="missing">{html.escape(str(path))} is missing (not built yet).</p>'


def _figure(
    path: Path, kind: str, captions: Mapping[str, str], embedded: list[Path], **wildcards: str
) -> str:
    """The figure with its caption; ``path`` is appended to ``embedded`` when it is shown."""
    if not path.is_file():
        return _missing(path)
    embedded.append(path)
    caption = _caption(captions, kind, **wildcards)
    return f"<figure>{_image(path, path.name)}<figcaption>{caption}</figcaption></figure>"


def _table(path: Path, columns: Sequence[str] | None = None) -> str:
    """A CSV as an HTML table; a sweep's ``<col>_std`` columns shown as ``mean ± std``."""
    if not path.is_file():
        return _missing(path)
    table = pd.read_csv(path)
    for col in [c for c in table.columns if f"{c}_std" in table.columns]:
        mean, std = table[col], table[f"{col}_std"]
        table[col] = [
            "-" if pd.isna(m) else f"{m:.2f} ± {s:.2f}" if pd.notna(s) else f"{m:.2f}"
            for m, s in zip(mean, std, strict=True)
        ]
    table = table[[c for c in table.columns if not c.endswith("_std")]]
    if columns is not None:
        table = table[[c for c in columns if c in table.columns]]
    return table.to_html(index=False, na_rep="-", float_format=lambda v: f"{v:.2f}", border=0)


def _provenance(run_dir: Path) -> str:
    steps = sorted((int(p.name[4:]), p) for p in run_dir.glob("step*") if p.name[4:].isdigit())
    if not steps:
        return ""
    metrics = steps[-1][1] / "metrics.json"
    if not metrics.is_file():
        return ""
    train = (json.loads(metrics.read_text()).get("provenance") or {}).get("train") or {}
    rows = []
    for key in PROVENANCE_KEYS:
        if train.get(key) is not None:
            value = train[key]
            if isinstance(value, dict):
                value = ", ".join(f"{k} {v}" for k, v in value.items())
            elif isinstance(value, list):
                value = ", ".join(map(str, value))
            rows.append(f"<dt>{key}</dt><dd>{html.escape(str(value))}</dd>")
    if not rows:
        return ""
    return f"<p>Provenance of step {steps[-1][0]}:</p><dl>{''.join(rows)}</dl>"


def run_section(
    results: Path,
    run: str,
    captions: Mapping[str, str],
    embedded: list[Path],
    heading: str = "h3",
) -> str:
    """One run (or sweep): table, figures (appended to ``embedded``), provenance."""
    run_dir = results / run
    parts = [f'<{heading} id="{html.escape(run)}">{html.escape(run)}</{heading}>']
    parts.append(_table(run_dir / "table.csv", RUN_COLUMNS))
    is_sweep = (run_dir / "members").is_dir()
    parts.append(f"<p>{_caption(captions, 'sweep' if is_sweep else 'table', run=run)}</p>")
    for kind in RUN_FIGURES:
        path = run_dir / f"{kind}.png"
        if kind == "miou" or not is_sweep:
            parts.append(_figure(path, kind, captions, embedded, run=run))
    parts.append(_provenance(run_dir))
    return "\n".join(parts)


def build_report(
    results: Path | str,
    out: Path | str,
    settings: Mapping[str, Sequence[str]] | None = None,
    experiments: Sequence[str] = (),
    captions: Mapping[str, str] | None = None,
    title: str = "lgkd results",
) -> list[Path]:
    """Write the report to ``out``; returns the image files it embedded (in page order).

    settings: {setting: its runs (one per method)}; experiments: runs and sweeps shown alone.
    """
    results = Path(results)
    settings = settings or {}
    captions = captions or {}
    embedded: list[Path] = []
    body = [f"<h1>{html.escape(title)}</h1>"]
    toc = [f'<li><a href="#{html.escape(n)}">{html.escape(n)}</a></li>' for n in settings]
    toc += [f'<li><a href="#{html.escape(n)}">{html.escape(n)}</a></li>' for n in experiments]
    body.append(f"<ul>{''.join(toc)}</ul>")
    for setting, runs in settings.items():
        body.append(f'<h2 id="{html.escape(setting)}">Setting {html.escape(setting)}</h2>')
        body.append(_table(results / setting / "compare.csv"))
        compare = results / setting / "compare.png"
        body.append(_figure(compare, "compare", captions, embedded, setting=setting))
        body.extend(run_section(results, run, captions, embedded) for run in runs)
    for name in experiments:
        body.append(run_section(results, name, captions, embedded, heading="h2"))
    summary = results / "summary.csv"
    if summary.is_file():
        body.append("<h2>Summary</h2>" + _table(summary))
        body.append(f"<p>{_caption(captions, 'summary')}</p>")
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
    atomic_write_text(Path(out), page)
    return embedded
