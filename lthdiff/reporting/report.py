"""Reports of an IMP run directory: one self-contained HTML page and a Markdown summary.

``build(run_dir)`` reads what :func:`lthdiff.lottery.imp.run_imp` wrote (``config.json``, every
``round_XX/summary.json``, masks, ``losses.json``, controls, and, when present, ``metrics.json``,
``samples.png`` and ``run_dir/efficiency.json``) and writes ``report.html`` (figures embedded as
base64 PNGs, inline CSS, no JavaScript, so it opens offline and survives being e-mailed) and
``report.md`` (the same tables, for a README or a lab notebook).  Nothing is retrained or sampled:
the report only reads files, so it can be rebuilt at any time.

Command line: ``python -m lthdiff.reporting.report RUN_DIR [--registry runs/lthdiff.db]``.
"""
from __future__ import annotations

import argparse
import html
import math
import os
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from lthdiff import masks as M
from . import plots
from .browser import screenshot
from .tables import fmt, html_table, md_table
from lthdiff.store.io import atomic_path, read_json
from lthdiff.lottery.runs import IMPResult, RegistryLog, read_losses, read_metrics
from lthdiff.evaluation.verdict import METRIC_LABELS, aggregate, headline, headline_text, matching_sparsity, rows_from_runs

__all__ = ["ReportPaths", "build", "results_table", "wide_table", "block_sparsity", "read_metrics",
           "screenshot", "main"]

# Block order for heatmaps: the way data flows through a UNet (input side on top), not the order
# diffusers registers modules in (it registers up_blocks before mid_block).
_INPUT_SIDE = ("time_proj", "time_embedding", "class_embedding", "add_embedding", "conv_in")
_STAGE_RANK = {"down": 1, "mid": 2, "up": 3}


@dataclass(frozen=True)
class ReportPaths:
    """Where :func:`build` wrote the report."""

    html: Path
    markdown: Path
    title: str = ""
    verdict: str = ""  # the headline as plain text (lthdiff.evaluation.verdict.headline_text), for a terminal


# ------------------------------------------------------------------------------ tables
def _load(run: Any):
    return run if isinstance(run, IMPResult) else IMPResult.load(run)


def results_table(run: Any):
    """Long table of a run (directory or :class:`~lthdiff.lottery.runs.IMPResult`): one row per round and
    variant (``ticket`` first, then controls) with ``sparsity``, ``final_loss`` and any metrics."""
    import pandas as pd

    result = _load(run)
    order = list(result.config.get("controls") or [])  # controls in the order the run listed them
    rows = []
    for r in result.rounds:
        controls = sorted(r.controls.values(), key=lambda c: (order.index(c.variant) if c.variant in order
                                                              else len(order), c.variant))
        for info in [r, *controls]:
            rows.append({"round": r.round, "variant": info.variant, "sparsity": info.sparsity,
                         "final_loss": info.final_loss,
                         **({"loss_at_init": info.loss_at_init} if info.loss_at_init is not None else {}),
                         **read_metrics(info.dir)})
    return pd.DataFrame(rows)


def wide_table(long: Any):
    """One row per round: ``sparsity`` then ``"<value> (<variant>)"`` columns, ticket first.

    ``long`` is :func:`results_table`'s output; values are ``final_loss`` then metrics in the
    order first seen.
    """
    import pandas as pd

    if long.empty:
        return pd.DataFrame(columns=["round", "sparsity"])
    values = [c for c in long.columns if c not in ("round", "variant", "sparsity")]
    variants = list(dict.fromkeys(["ticket", *long["variant"]]))
    out = long[long["variant"] == "ticket"][["round", "sparsity"]].drop_duplicates("round")
    out = out.set_index("round")
    for value in values:
        for variant in variants:
            col = long[long["variant"] == variant].set_index("round")[value]
            if col.notna().any():
                out[f"{value} ({variant})"] = col
    return out.reset_index()


def _flow_key(block: str) -> tuple[int, int]:
    if block in _INPUT_SIDE:
        return (0, _INPUT_SIDE.index(block))
    stage = M.stage_of(block + ".x")
    if stage in _STAGE_RANK:
        parts = block.split(".")
        index = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        return (_STAGE_RANK[stage], index)
    return (4, 0)


def block_sparsity(run: Any, variant: str = "ticket"):
    """Sparsity (fraction pruned) per UNet block (rows, input side first) and round (columns),
    computed from each round's saved mask with :func:`lthdiff.masks.report` (``by="block"``)."""
    import pandas as pd

    cols = {}
    for r in _load(run).rounds:
        info = r if variant == "ticket" else r.controls.get(variant)
        if info is None or not info.mask_path.exists():
            continue
        rep = M.report(info.load_mask(), by="block")
        cols[r.round] = rep.set_index("block")["sparsity"]
    if not cols:
        return pd.DataFrame()
    df = pd.DataFrame(cols)
    order = sorted(df.index, key=lambda b: (_flow_key(b), list(df.index).index(b)))
    return df.loc[order]


# ------------------------------------------------------------------------------ column names
# What a column means, with its unit; a reader should never have to know our dict keys.
_EFFICIENCY_LABELS = {"params_total": "parameters", "params_nonzero": "non-zero parameters",
                      "macs_dense": "MACs (dense kernels)", "macs_effective": "MACs (sparse kernels)",
                      "macs_reduction": "MACs ×  (dense / sparse)", "dense_fp32_bytes": "dense fp32 file (bytes)",
                      "compressed_bytes": "compressed ticket (bytes)", "compression_ratio": "size ×  (dense / ticket)",
                      "latency_s": "latency (s / image)", "latency_s_per_step": "latency (s / step)",
                      "throughput_img_per_s": "throughput (images / s)"}
# Improved precision/recall (k=3 nearest neighbours) is noise on a few hundred samples, and
# KID's std over subsets describes the estimator, not the network: neither belongs in a results table.
_PRC = ("precision", "recall", "f_score")
PRC_MIN_SAMPLES = 1000


def _labelled(df: Any, labels: Mapping[str, str]):
    return df.rename(columns={c: labels.get(c, c) for c in df.columns})


def _details_table(long: Any, n_samples: int | None) -> tuple[Any, list[str]]:
    """The long results table without columns that mean nothing at this sample size; what was dropped and why."""
    drop, why = [], []
    if "kid_std" in long.columns:
        drop.append("kid_std")
    present = [c for c in _PRC if c in long.columns]
    if present and (n_samples is None or n_samples < PRC_MIN_SAMPLES):
        drop += present
        why.append(f"precision/recall/F-score left out: {n_samples or 'too few'} samples per network "
                   f"(k-NN manifolds need >= {PRC_MIN_SAMPLES})")
    return long.drop(columns=drop), why


def _config_frame(config: Mapping[str, Any]):
    import pandas as pd

    def clean(v: Any) -> Any:
        # diffusers' bookkeeping keys (_class_name, _use_default_values...) are noise in a report,
        # and so are 17-digit floats
        if isinstance(v, Mapping):
            return {k: clean(x) for k, x in v.items() if not str(k).startswith("_")}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return float(f"{v:.4g}") if isinstance(v, float) else v

    return pd.DataFrame({"setting": list(config), "value": [fmt(clean(v)) for v in config.values()]})


def _efficiency_frame(run_dir: Path):
    import pandas as pd

    path = run_dir / "efficiency.json"
    if not path.exists():
        return None
    data = read_json(path)
    if isinstance(data, Mapping) and isinstance(data.get("rows"), list):
        data = data["rows"]
    if isinstance(data, list):
        df = pd.DataFrame([d for d in data if isinstance(d, Mapping)])
        first = [c for c in ("round", "variant", "sparsity") if c in df.columns]
        return df[first + [c for c in df.columns if c not in first]]
    if isinstance(data, Mapping):
        return pd.DataFrame({"quantity": list(data), "value": list(data.values())})
    raise ValueError(f"{path} must hold a JSON object or a list of rows, got {type(data).__name__}")


# ------------------------------------------------------------------------------ figures
def _figure(fig: Any, alt: str) -> str:
    uri = plots.data_uri(plots.to_png(fig))
    plots.close(fig)
    return f'<figure><img src="{uri}" alt="{html.escape(alt)}"><figcaption>{html.escape(alt)}</figcaption></figure>'


def _figures(result: Any, long: Any, blocks: Any) -> list[tuple[str, str]]:
    """(section title, HTML) for each figure of the report."""
    out = []
    metric_cols = [c for c in long.columns if c not in ("round", "variant", "sparsity", "seed")]
    if len(long["round"].unique()) > 1 and metric_cols:
        import matplotlib.pyplot as plt

        # one figure with a panel per metric: one render instead of several
        ncols = min(3, len(metric_cols))
        nrows = math.ceil(len(metric_cols) / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.3 * nrows), squeeze=False,
                                 layout="constrained")
        for ax in axes.flat[len(metric_cols):]:
            ax.axis("off")
        for ax, m in zip(axes.flat, metric_cols):
            plots.sparsity_curve(long, m, ax=ax)
        caption = "metrics vs weights remaining (log axis)"
        if long["variant"].nunique() > 1:
            caption += "; ticket solid, controls dashed"
        out.append(("Sparsity vs metrics", _figure(fig, caption)))
    if not blocks.empty:
        sp = {r.round: r.sparsity for r in result.rounds}
        mat = blocks.copy()
        mat.columns = [f"r{c} ({sp[c]:.0%})" for c in mat.columns]
        out.append(("Sparsity per block", _figure(plots.sparsity_heatmap(
            mat, title="fraction of weights pruned per UNet block (ticket)"), "per-block sparsity by round")))
    losses = {f"round {r.round} ({r.sparsity:.0%})": read_losses(r)
              for r in result.rounds if (r.dir / "losses.json").exists()}
    losses = {k: v for k, v in losses.items() if isinstance(v, list) and v}
    if losses:
        import matplotlib.pyplot as plt

        def axes():  # two loss plots fit side by side in the page
            return plt.subplots(figsize=(5.2, 3.4), layout="constrained")[1]

        figs = _figure(plots.loss_curve(losses, title="training loss of each round's ticket", ax=axes()),
                       "ticket losses")
        last = result.rounds[-1]
        ctrl = {name: read_losses(c) for name, c in last.controls.items()
                if (c.dir / "losses.json").exists()}
        if ctrl and (last.dir / "losses.json").exists():
            ctrl = {"ticket": read_losses(last), **ctrl}
            figs += _figure(plots.loss_curve(ctrl, title=f"round {last.round}: ticket vs controls", ax=axes()),
                            f"round {last.round} losses, ticket and controls")
        out.append(("Training loss", figs))
    return out


def _samples_html(result: Any) -> str:
    variants = [v for v in dict.fromkeys(["ticket", *(n for r in result.rounds for n in r.controls)])
                if any((({"ticket": r, **r.controls}[v].dir / "samples.png").exists()) for r in result.rounds
                       if v == "ticket" or v in r.controls)]
    rows = []
    for r in result.rounds:
        infos = {"ticket": r, **r.controls}
        cells = []
        for v in variants:
            p = infos[v].dir / "samples.png" if v in infos else None
            cells.append(f'<td><img class="samples" src="{plots.data_uri(p)}" alt="round {r.round} {v} samples"></td>'
                         if p is not None and p.exists() else "<td>–</td>")
        if any(c != "<td>–</td>" for c in cells):
            rows.append(f"<tr><th>round {r.round}<br>{r.sparsity:.1%}</th>{''.join(cells)}</tr>")
    if not rows:
        return ""
    head = "<th></th>" + "".join(f"<th>{html.escape(v)}</th>" for v in variants)
    return f'<table class="samples"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;
     padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.meta{color:#666;font-size:.9em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right;vertical-align:top}
th{background:#f4f4f4} td:first-child,th:first-child{text-align:left}
table.config td,table.config th{text-align:left;max-width:760px;word-break:break-word}
table.config td{font-family:ui-monospace,monospace}
figure{display:inline-block;margin:.5em 1em .5em 0} figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#666;font-size:.85em}
img.samples{width:160px;image-rendering:pixelated}
table.samples td,table.samples th{text-align:center}
"""


def _samples_per_network(result: Any) -> int | None:
    """Samples behind each network's FID (from the evaluation settings in metrics.json), None if not evaluated."""
    for r in result.rounds:
        path = r.dir / "metrics.json"
        if path.exists():
            data = read_json(path)
            n = data.get("settings", {}).get("n") if isinstance(data, Mapping) else None
            if isinstance(n, int):
                return n
    return None


def _verdict_html(rows: list[dict[str, Any]], table: Any, text: str) -> str:
    """Headline ``table`` (and its ``text``), the matching sparsity in one sentence, and the metric vs
    sparsity with error bars."""
    metric = table.attrs["metric"]
    lines = text.splitlines()
    intro, sentence = lines[0], lines[-1]
    out = f"<p>{html.escape(intro)}</p>" + html_table(table, "headline") + f"<p><b>{html.escape(sentence)}</b></p>"
    if len(table) > 1:
        seeds = table.attrs["seeds"]
        fig = plots.quality_vs_sparsity(aggregate(rows, metric), metric=metric,
                                        matching=matching_sparsity(rows, metric)["sparsity"] or None,
                                        title=f"{metric.upper() if metric == 'fid' else metric} vs sparsity"
                                              + (f" (mean ± std over {seeds} seeds)" if seeds > 1 else " (1 seed)"))
        out += _figure(fig, "ticket and controls vs sparsity; the grey band is dense ± 1 std over seeds")
    return out


# ------------------------------------------------------------------------------ build
def build(run_dir: str | os.PathLike, *, out_dir: str | os.PathLike | None = None, title: str | None = None,
          more_runs: Sequence[str | os.PathLike] = ()) -> ReportPaths:
    """Write ``report.html`` and ``report.md`` for the IMP run in ``run_dir`` (to ``out_dir``,
    default ``run_dir/report``); atomically, so a reader never sees half a report.

    The page leads with the verdict (:func:`lthdiff.evaluation.verdict.headline`): per sparsity, the ticket's
    FID relative to dense and to each control, and the seeds it wins.  ``more_runs``: run
    directories of the same experiment with other seeds; the verdict averages over all of them
    and its plot gets error bars (the details below describe ``run_dir`` alone).
    To record the report in a registry: :meth:`lthdiff.lottery.runs.RegistryLog.report` (as the pipeline
    and ``python -m lthdiff.reporting.report --registry`` do).
    """
    run_dir = Path(run_dir)
    result = _load(run_dir)
    if not result.rounds:
        raise ValueError(f"{run_dir} has no completed round (no round_XX/summary.json); nothing to report")
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "report"
    title = title or f"IMP report: {run_dir.resolve().name}"
    long = results_table(result)
    blocks = block_sparsity(result)
    eff = _efficiency_frame(run_dir)
    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    from lthdiff import __version__

    meta = (f"run directory <code>{html.escape(str(run_dir.resolve()))}</code> · {len(result.rounds)} rounds · "
            f"generated {created} by lthdiff {__version__}")
    rows = rows_from_runs([result, *[r for r in more_runs]])
    n_samples = _samples_per_network(result)
    details, dropped = _details_table(long, n_samples)
    table = headline(rows)
    verdict = headline_text(rows, table=table)
    sections = [("Verdict", _verdict_html(rows, table, verdict)),
                ("Details: every metric", "<p>One row per round: overall sparsity, the final training loss "
                 "(mean of the last steps) and every metric of the ticket and its controls"
                 + (f" ({n_samples} samples per network)" if n_samples else "") + ". "
                 + " ".join(html.escape(w) + "." for w in dropped) + "</p>"
                 + html_table(wide_table(_labelled(details, METRIC_LABELS)), "results"))]
    from lthdiff.evaluation.metrics.paired_fidelity import run_note

    if run_note(result):  # what the paired ssim/psnr/perceptual columns are, and which perceptual measure
        sections[1] = (sections[1][0], sections[1][1] + f"<p>{html.escape(run_note(result))}</p>")
    sections += _figures(result, details, blocks)
    if not blocks.empty:
        tbl = blocks.copy()
        tbl.columns = [f"round {c}" for c in tbl.columns]
        sections.append(("Sparsity per block (table)",
                         "<details><summary>show</summary>" + html_table(tbl.reset_index(names="block"), "blocks")
                         + "</details>"))
    samples = _samples_html(result)
    if samples:
        sections.append(("Samples", samples))
    if eff is not None and not eff.empty:
        eff = _labelled(eff, _EFFICIENCY_LABELS)
        sections.append(("Efficiency", html_table(eff, "efficiency")))
    sections.append(("Configuration", html_table(_config_frame(result.config), "config")))
    body = "".join(f"<section><h2>{html.escape(h)}</h2>{content}</section>" for h, content in sections)
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>'
            f'<body><h1>{html.escape(title)}</h1><p class="meta">{meta}</p>{body}</body></html>\n')

    md = [f"# {title}", "", f"Run directory `{run_dir.resolve()}`, {len(result.rounds)} rounds, generated "
          f"{created} by lthdiff {__version__}. Figures and samples: `report.html`.", "",
          "## Verdict", "", "```", verdict, "```", "",
          "## Details: every metric", "", md_table(wide_table(_labelled(details, METRIC_LABELS))), "", *[w + "." for w in dropped],
          *([run_note(result), ""] if run_note(result) else [])]
    if not blocks.empty:
        tbl = blocks.copy()
        tbl.columns = [f"round {c}" for c in tbl.columns]
        md += ["## Sparsity per block", "", md_table(tbl.reset_index(names="block")), ""]
    if eff is not None and not eff.empty:
        md += ["## Efficiency", "", md_table(eff), ""]
    md += ["## Configuration", "", md_table(_config_frame(result.config)), ""]

    paths = ReportPaths(html=out_dir / "report.html", markdown=out_dir / "report.md", title=title,
                        verdict=verdict)
    with atomic_path(paths.html) as tmp:
        tmp.write_text(page, encoding="utf-8")
    with atomic_path(paths.markdown) as tmp:
        tmp.write_text("\n".join(md), encoding="utf-8")
    return paths


# ------------------------------------------------------------------------------ CLI
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lthdiff.reporting.report RUN_DIR``: build the report, print where it is; 0 on success, 2 on error."""
    ap = argparse.ArgumentParser(prog="python -m lthdiff.reporting.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", help="IMP run directory (holds config.json and round_XX/)")
    ap.add_argument("more_runs", nargs="*", metavar="MORE_RUN_DIRS",
                    help="the same experiment with other seeds: the verdict averages over all runs (error bars)")
    ap.add_argument("--registry", default=None, help="SQLite registry to record the report in")
    ap.add_argument("--out-dir", default=None, help="where to write report.html/report.md (default RUN_DIR/report)")
    ap.add_argument("--title", default=None)
    ap.add_argument("--screenshot", default=None, metavar="PNG", help="also render the page to PNG with Chromium")
    args = ap.parse_args(argv)
    try:
        paths = build(args.run_dir, out_dir=args.out_dir, title=args.title, more_runs=args.more_runs)
        RegistryLog(args.registry, args.run_dir).report(paths.title, paths.html)
    except (ValueError, FileNotFoundError) as exc:
        print(f"lthdiff report: error: {exc}", file=sys.stderr)
        return 2
    print(paths.verdict)
    print(f"report: {paths.html}\nsummary: {paths.markdown}")
    if args.screenshot:
        shot = screenshot(paths.html, args.screenshot)
        if shot is not None:
            print(f"screenshot: {shot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
