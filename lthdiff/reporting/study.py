"""A study's tables and sentences: the aggregate (:func:`lthdiff.study.aggregate.aggregate_records`) as its
Markdown page, the README block (every number read from the aggregate), and the README updater."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from lthdiff.study.arms import LATE_FRACTION, late_rewind_step
from .tables import markdown_table

__all__ = ["markdown", "study_summary", "update_readme", "overlap_markdown", "structured_markdown", "as_bullets",
           "memorisation_markdown",
           "width_summary", "structured_answer"]


def _fmt(x: Any, digits: int = 3) -> str:
    return f"{x:.{digits}g}" if isinstance(x, (int, float)) and math.isfinite(x) else "—"


def markdown(name: str, agg: dict[str, Any]) -> str:
    """The aggregate as the Markdown page ``<name>.md``."""
    st = agg["settings"]
    sched = ", ".join(f"{x:.1%}" for x in st["schedule"])
    lines = []
    kid_by = {(r["sparsity"], r["variant"]): r for r in agg["kid_test_table"]}
    for r in agg["table"]:
        k = kid_by.get((r["sparsity"], r["variant"]), {})
        line = {"sparsity": f"{r['sparsity']:.1%}", "weights left": f"{1 - r['sparsity']:.1%}", "variant": r["variant"],
                "seeds": r["seeds"], "FID (train)": f"{_fmt(r['fid_mean'])} ± {_fmt(r['fid_std'], 2)}",
                "FID / dense": f"{_fmt(r['ratio_to_dense_mean'])} ± {_fmt(r['ratio_to_dense_std'], 2)}",
                "per seed": ", ".join(_fmt(v) for v in r["ratio_to_dense_per_seed"].values()),
                "KID (test)": f"{_fmt(k.get('kid_test_mean'))} ± {_fmt(k.get('kid_test_std'), 2)}"}
        if r["variant"] == "ticket" and r["sparsity"] > 0:
            for c, vs in agg["versus"].items():
                v = next((x for x in vs if math.isclose(x["sparsity"], r["sparsity"], abs_tol=5e-4)), None)
                line[f"won vs {c}"] = f"{v['ticket_wins']}/{v['seeds']}" if v and v["seeds"] else "—"
        lines.append(line)
    m = agg["matching"]
    miss = f" (first miss at {m['first_miss']:.1%})" if m["first_miss"] is not None else " (every recorded sparsity matches)"
    conv_rows = [{"seed": c["seed"], "FID @ T/2": _fmt(c["fid_half"]), f"FID @ T={c['steps']}": _fmt(c["fid_T"]),
                  "FID @ 1.5T": _fmt(c["fid_1.5T"]), "tolerance": _fmt(c.get("fid_tolerance")),
                  "loss last 10 % (T)": _fmt(c.get("loss_last10_T"), 4),
                  "loss last 10 % (1.5T)": _fmt(c.get("loss_last10_1.5T"), 4),
                  "KID test @ T": _fmt(c["kid_test_T"]), "KID test @ 1.5T": _fmt(c.get("kid_test_1.5T")),
                  "converged": c.get("converged", "not yet run")} for c in agg["convergence"]]
    init_rows = [{"sparsity": f"{r['sparsity']:.1%}", "variant": r["variant"],
                  "loss at init": f"{_fmt(r['loss_at_init_mean'])} ± {_fmt(r['loss_at_init_std'], 2)}",
                  "seeds": r["seeds"]} for r in agg["loss_at_init"]]
    rec = ", ".join(f"seed {k}: {agg['networks_recorded'][k]}/{v}" for k, v in agg["networks_planned"].items())
    return (f"# {name}: ticket quality vs sparsity ({st['dataset']} {st['image_size']} px, {st['preset']} UNet)\n\n"
            + ("" if agg["complete"] else f"**Partial: networks recorded {rec}** (the study continues; numbers "
               "below are over the seeds recorded so far).\n\n")
            + f"Seeds {agg['seeds']}; sparsities {sched}; every network trained {st['steps']} steps (batch "
            f"{st['batch_size']}, lr {st['lr']}, constant), rewind `{st['rewind']}`; FID/KID from {st['n']} "
            f"DDIM-{st['sample_steps']} samples (EMA weights, sampling seed = training seed), extractor "
            f"`{st['extractor']}`, FID against the training split, KID also against the held-out test split. "
            "Mean ± std over seeds; FID / dense is per seed; a seed is won when the ticket's FID is lower.\n\n"
            + markdown_table(lines, list(dict.fromkeys(k for line in lines for k in line)))
            + f"\n**Matching sparsity** (ticket mean FID <= dense {_fmt(m['dense_mean'])} + 1 std "
            f"{_fmt(m['dense_std'], 2)} = {_fmt(m['bound'])} there and at every lower sparsity): "
            f"**{m['sparsity']:.1%}**{miss}. "
            + "The same bound for the other variants: " + "; ".join(
                f"{v} {_matching_text(mc, agg['table'])}" for v, mc in agg["matching_controls"].items()) + ".\n\n"
            "## Converged?\n\nDense at T/2 and T, and continued from its final checkpoint (optimizer state "
            "included) to 1.5 T. Converged: |FID(1.5T) - FID(T)| <= max(dense FID std over seeds, 5 % of "
            "FID(T)) and the mean loss over the last 10 % of 1.5 T within 5 % of that over the last 10 % of T.\n\n"
            + markdown_table(conv_rows) + _overall_text(agg.get("convergence_overall"))
            + "\n## Loss at init\n\nThe diffusion loss of each network's starting weights (theta_0 * m for a "
            "ticket, the fresh init * m for random reinit, the previous network's trained weights * m for prune and "
            "continue, theta_K * m for late rewinding) on one fixed batch of 256 training images, noise and "
            "timesteps, before any training (predicting zero noise scores about 1).\n\n" + markdown_table(init_rows)
            + memorisation_markdown(agg.get("memorisation") or [], st["extractor"])
            + overlap_markdown(agg.get("mask_overlap") or []) + structured_markdown(agg.get("structured") or []))


def memorisation_markdown(rows: Sequence[dict[str, Any]], extractor: str) -> str:
    """The memorisation table (:func:`lthdiff.study.aggregate.memorisation_table`), or nothing."""
    if not rows:
        return ""
    cell = lambda r, k: f"{_fmt(r[k + '_mean'], 2)} ± {_fmt(r[k + '_std'], 1)}" if r[k + "_mean"] is not None else "—"  # noqa: E731
    table = [{"sparsity": f"{r['sparsity']:.1%}", "variant": r["variant"], "seeds": r["seeds"],
              "closer than test (pixels / features)": f"{cell(r, 'pixels_closer_than_test')} / "
                                                       f"{cell(r, 'features_closer_than_test')}",
              "copy rate (pixels / features)": f"{cell(r, 'pixels_copy_rate')} / {cell(r, 'features_copy_rate')}",
              "NN distance / test's (pixels / features)": f"{cell(r, 'pixels_nn_ratio')} / {cell(r, 'features_nn_ratio')}"}
             for r in rows]
    frac = rows[0]["copy_fraction"]
    return ("\n## Memorisation\n\nEach sample's distance to its nearest training image against each held-out test "
            "image's distance to its nearest training image, in pixels and in `" + extractor + "` features: the "
            "fraction of samples closer to a training image than the closest test image is, the copy rate (nearest "
            f"training image nearer than {frac:.2g} x the median test-to-train distance) and the median distance ratio "
            "(1: samples as far from the training set as unseen digits are). Mean ± std over seeds; networks scored "
            "before this was recorded are left out.\n\n" + markdown_table(table))


def overlap_markdown(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return ""
    table = [{"round": r["round"], "sparsity": f"{r['sparsity']:.1%}", "masks": r["pair"], "seeds": r["seeds"],
              "Jaccard (IoU of kept weights)": f"{_fmt(r['jaccard_mean'])} ± {_fmt(r['jaccard_std'], 2)}",
              "random masks": _fmt(r["chance_jaccard"])} for r in rows]
    return ("\n## Do the arms find the same weights?\n\nJaccard overlap of the masks two arms train at the same "
            "round (round 1 is shared: dense round 0 pruned once), against two independent random masks of the same "
            "densities.\n\n" + markdown_table(table))


def _check(row: dict[str, Any]) -> str:
    """A structured ticket's convergence check in one cell: mean FID change T -> 1.5 T, seeds within tolerance."""
    if row["kind"] != "ticket":
        return ""
    o = row.get("convergence_overall")
    if not o:
        return "not run yet"
    return (f"{o['delta_mean']:+.3f} ± {o['delta_std']:.3f} ({o['seeds_within']}/{o['seeds']} seeds within; "
            f"{'converged' if o['converged'] else 'not converged'} on average)")


def structured_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The structured arms' table (:func:`lthdiff.study.aggregate.structured_table`), or nothing."""
    if not rows:
        return ""
    table = [{"MACs removed": f"{r['reduction']:.0%}", "importance": r["importance"] or "(none)", "arm": r["kind"],
              "seeds": r["seeds"],
              "MACs / dense": _fmt(r["macs_ratio"]), "FID": f"{_fmt(r['fid_mean'])} ± {_fmt(r['fid_std'], 2)}",
              "FID / dense": _fmt(r["ratio_to_dense_mean"]), "matches dense": "yes" if r["matches_dense"] else "no",
              "ticket wins vs scratch / fine-tune": (f"{r['wins_vs_scratch'][0]}/{r['wins_vs_scratch'][1]}, "
                                                     f"{r['wins_vs_finetune'][0]}/{r['wins_vs_finetune'][1]}")
              if r["kind"] == "ticket" else "", "FID change T -> 1.5 T": _check(r)} for r in rows]
    return ("\n## Structured tickets\n\nThe dense network's channels pruned once (per-level ratios for the MAC "
            "reduction), three networks of the small architecture, each trained T steps: the structured ticket "
            "(theta_0 at the kept channels), scratch (a fresh init; Liu et al. 2019; one network a reduction: the "
            "per-level ratios fix the architecture whatever the importance) and fine-tune (the pruned trained "
            "weights; Diff-Pruning, Fang et al. 2023). Matches dense: mean FID within dense mean + 1 std. The "
            "ticket gets dense's convergence check: trained on to 1.5 T, converged when the mean FID moves by at most "
            "max(dense FID std, 5 %) and the late loss by at most 5 %.\n\n"
            + markdown_table(table))


def _arm_names(settings: dict[str, Any]) -> dict[str, str]:
    """How the summary names the arms other than the ticket's IMP chain."""
    return {"continue": "Prune and continue (Jiang et al.'s released code: no rewinding, so the network at round r "
                        "has trained (r + 1) T steps in all)",
            "late": f"Late rewinding to theta_K (K = T / {LATE_FRACTION} = {late_rewind_step(settings)} steps, Frankle "
                    "et al. 2019; each network then trains T - K steps)"}


def _matching_text(m: dict[str, Any], table: Sequence[dict[str, Any]]) -> str:
    """A variant's matching sparsity in words; a sparsity it has no network at yet is not called a miss."""
    if m["first_miss"] is None:
        return f"{m['sparsity']:.1%} (no recorded sparsity misses)"
    there = any(r["variant"] == m["variant"] and math.isclose(r["sparsity"], m["first_miss"], abs_tol=5e-4) for r in table)
    if not there:
        mine = sorted((r for r in table if r["variant"] == m["variant"]), key=lambda r: r["sparsity"])
        if mine and mine[0]["sparsity"] > m["first_miss"]:  # a control run only from a higher round on, by design
            top = None
            for r in mine:
                if r["fid_mean"] > m["bound"]:
                    break
                top = r["sparsity"]
            return (f"run from {mine[0]['sparsity']:.1%} on, " + (f"matches up to {top:.1%}" if top is not None else
                                                                  f"misses already at {mine[0]['sparsity']:.1%}"))
        return f"{m['sparsity']:.1%} so far (not yet recorded at {m['first_miss']:.1%})"
    return f"{m['sparsity']:.1%} (first miss {m['first_miss']:.1%})"


def _overall_text(o: dict[str, Any] | None) -> str:
    """The convergence check over seeds: does training 50 % longer lower the mean dense FID?"""
    if not o:
        return ""
    return (f"\n**Over the {o['seeds']} seeds**: mean dense FID {_fmt(o['fid_T_mean'])} at T and "
            f"{_fmt(o['fid_1.5T_mean'])} at 1.5 T, a change of {o['delta_mean']:+.3f} ± {_fmt(o['delta_std'], 2)} "
            f"(per seed {', '.join(f'{d:+.3f}' for d in o['deltas'])}; tolerance {_fmt(o['fid_tolerance'])}): "
            + ("**converged**" if o["converged"] else "**not converged**")
            + f"; {o['seeds_within']}/{o['seeds']} seeds within the tolerance on their own.\n")


def study_summary(agg: dict[str, Any]) -> str:
    """The study's answer in a few Markdown sentences, every number read from ``agg``
    (:func:`aggregate_records`): matching sparsity, ticket / dense per sparsity (mean ± std and per
    seed), seeds won against each control, the convergence check and the loss at init."""
    st, m = agg["settings"], agg["matching"]
    seeds = agg["seeds"]
    head = (f"{st['dataset']} {st['image_size']} px, {st['preset']} UNet, T = {st['steps']} steps a network, "
            f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))}), FID of {st['n']} "
            f"DDIM-{st['sample_steps']} samples")
    partial = "" if agg["complete"] else (" **Partial**: " + ", ".join(
        f"seed {k} {agg['networks_recorded'][k]}/{v} networks" for k, v in agg["networks_planned"].items())
        + " recorded so far; the study continues.")
    pruned = [r for r in agg["table"] if r["variant"] == "ticket" and r["sparsity"] > 0]
    if pruned:
        miss = (f"; the first sparsity that misses is {m['first_miss']:.1%}" if m["first_miss"] is not None
                else "; every recorded sparsity matches")
        match = (f"Tickets match the dense model (mean FID within dense {_fmt(m['dense_mean'])} + 1 std "
                 f"{_fmt(m['dense_std'], 2)}) up to **{m['sparsity']:.1%}** sparsity{miss}.")
        ratios = "; ".join(f"{r['sparsity']:.1%}: {_fmt(r['ratio_to_dense_mean'])} ± {_fmt(r['ratio_to_dense_std'], 2)} "
                           f"({', '.join(_fmt(v) for v in r['ratio_to_dense_per_seed'].values())})" for r in pruned)
        wins = []
        for c, vs in agg["versus"].items():
            got = [f"{v['sparsity']:.1%} {v['ticket_wins']}/{v['seeds']}" for v in vs if v["seeds"]]
            if got:
                wins.append(f"against {c}: " + ", ".join(got))
        body = (f"{match} Ticket FID / dense FID per sparsity, mean ± std (per seed): {ratios}. "
                + (f"Seeds the ticket wins {'; '.join(wins)}." if wins else ""))
        for arm, what in _arm_names(st).items():
            got = [r for r in agg["table"] if r["variant"] == arm]
            if got:
                body += (f" {what}, FID / dense: " + "; ".join(
                    f"{r['sparsity']:.1%}: {_fmt(r['ratio_to_dense_mean'])} ± {_fmt(r['ratio_to_dense_std'], 2)} "
                    f"({r['seeds']} seed{'s' if r['seeds'] != 1 else ''})" for r in got)
                    + f"; it matches up to {_matching_text(agg['matching_controls'][arm], agg['table'])}.")
    else:
        body = "No pruned network is recorded yet."
    conv = [c for c in agg["convergence"] if c.get("converged") is not None]
    conv_text = ""
    if conv:
        ok = sum(bool(c["converged"]) for c in conv)
        o = agg.get("convergence_overall")
        conv_text = (f" Dense converged at T in {ok}/{len(conv)} seeds: FID at T/2, T, 1.5 T = "
                     + "; ".join(f"seed {c['seed']}: {_fmt(c['fid_half'])}, {_fmt(c['fid_T'])}, {_fmt(c['fid_1.5T'])}"
                                 for c in conv) + f" (tolerance max(dense std, 5 %) = {_fmt(conv[0]['fid_tolerance'])})"
                     + (f"; over the seeds the mean FID moved {o['delta_mean']:+.3f} ± {_fmt(o['delta_std'], 2)} from T "
                        f"to 1.5 T: {'converged' if o['converged'] else 'not converged'} on average." if o else "."))
    init = {r["variant"]: r for r in agg["loss_at_init"] if r["sparsity"] == max(
        (x["sparsity"] for x in agg["loss_at_init"] if x["variant"] == "ticket"), default=-1)}
    dense_init = next((r for r in agg["loss_at_init"] if r["variant"] == "dense"), None)
    init_text = ""
    if "ticket" in init and dense_init:
        others = ", ".join(f"{v} {_fmt(r['loss_at_init_mean'])}" for v, r in init.items() if v != "ticket")
        init_text = (f" Loss at init (before training, one fixed batch): theta_0 {_fmt(dense_init['loss_at_init_mean'])}, "
                     f"ticket theta_0 * m {_fmt(init['ticket']['loss_at_init_mean'])} at "
                     f"{init['ticket']['sparsity']:.1%}" + (f", {others}" if others else "")
                     + ": the mask alone already denoises (the supermask effect, Zhou et al. 2019).")
    return f"**{head}.**{partial} {body}{conv_text}{init_text}"


def as_bullets(text: str) -> str:
    """A Markdown paragraph as one bullet a sentence (a leading bold heading stays a line of its own), so a
    notebook's closing cell reads as a list instead of one block (a sentence ends at ". " before a capital)."""
    import re

    head = ""
    if text.startswith("**"):
        end = text.index("**", 2) + 2
        head, text = text[:end] + "\n", text[end:].strip()
    return head + "\n".join(f"- {s}" for s in re.split(r"(?<=\.) (?=[A-Z*])", text) if s.strip())


def width_summary(studies: Sequence[dict[str, Any]], claim_params: float = 35.7e6) -> str:
    """What the width studies (:func:`lthdiff.study.width_studies`) say, one bullet a width, and what their span of
    parameter counts supports: nothing outside it, least of all Jiang et al. 2023's ``claim_params``."""
    if not studies:
        return "No width study is recorded here."
    lines = []
    for w in studies:
        m = w["agg"]["matching"]
        miss = f"first miss {m['first_miss']:.1%}" if m["first_miss"] is not None else "no miss recorded yet"
        at = [r.get("seeds") for r in w["agg"].get("table", []) if r["variant"] == "ticket" and r["sparsity"] == m["sparsity"]]
        there = f" ({at[0]} of {len(w['agg']['seeds'])} seeds there)" if at and at[0] != len(w["agg"]["seeds"]) else ""
        lines.append(f"- {w['label']} ({w['params'] / 1e6:.2g}M parameters, {len(w['agg']['seeds'])} seeds"
                     f"{'' if w['agg']['complete'] else ', still running'}): tickets match "
                     f"{'' if w['agg']['complete'] else 'so far '}up to {m['sparsity']:.1%}{there}, {miss}")
    done = [w for w in studies if w["agg"]["complete"]]
    lo, hi = (min(w["params"] for w in done), max(w["params"] for w in done)) if done else (0, 0)
    if len(done) >= 3:
        reach = (f"{len(done)} complete widths span {lo / 1e6:.2g}M-{hi / 1e6:.2g}M parameters ({hi / lo:.3g}x): a trend "
                 f"between them may be read inside that span only; {claim_params / 1e6:.3g}M is {claim_params / hi:.3g}x "
                 "beyond its top, so they say nothing about 99 % there.")
    else:
        reach = (f"{len(done)} complete width(s) so far: too few for a trend, and nothing about 99 % at "
                 f"{claim_params / 1e6:.3g}M parameters.")
    return "\n".join(lines) + "\n\n" + reach


def _speed(serving: dict[str, Any], reduction: float, batch: int, threads: int) -> dict[str, Any] | None:
    """Whole DDIM sampling of the pruned UNet at ``reduction`` against dense, each in its fastest runtime, from a
    ``python -m lthdiff.bench serving`` result: p50 latency of both, images/s of both, dense p50 / pruned p50."""
    fastest = {r["model"]: r for r in serving.get("fastest", []) if r["batch"] == batch and r["threads"] == threads
               and r["what"].endswith("sample")}
    dense, pruned = fastest.get("dense"), fastest.get(f"-{round(100 * reduction)}% MACs")
    if not dense or not pruned:
        return None
    return {"dense": dense, "pruned": pruned, "speedup": dense["p50_s"] / pruned["p50_s"]}


def structured_answer(rows: Sequence[dict[str, Any]], serving: dict[str, Any] | None = None, threads: int = 1) -> str:
    """Issue 34's answer from the structured table (:func:`lthdiff.study.aggregate.structured_table`) and the serving
    benchmark: per MAC reduction and arm, FID / dense (seeds, whether it matches dense, the ticket's convergence
    check) and the sampling speed of that architecture at batch 1 and 64 on a CPU (latency and throughput, each
    model in its fastest runtime, ``threads`` torch/ORT threads); then which arm does best and whether any network
    reaches the goal (>= 50 % fewer MACs, within dense + 1 std, batch-1 sampling <= 0.6x dense's)."""
    if not rows:
        return "No structured network is recorded yet."
    lines, goal = [], []
    for red in sorted({r["reduction"] for r in rows}):
        level = [r for r in rows if r["reduction"] == red]
        reached = 1 - (level[0]["macs_ratio"] or (1 - red))
        speed = [(b, _speed(serving or {}, red, b, threads)) for b in (1, 64)]
        said = "; ".join(f"batch {b}: {sp['pruned']['p50_s'] * 1e3:.3g} ms vs dense {sp['dense']['p50_s'] * 1e3:.3g} ms "
                         f"({sp['speedup']:.2f}x faster, {sp['pruned']['images_per_s']:.3g} vs "
                         f"{sp['dense']['images_per_s']:.3g} images/s; {sp['pruned']['fastest']} vs "
                         f"{sp['dense']['fastest']})" for b, sp in speed if sp)
        lines.append(f"- **{reached:.0%} fewer MACs** (target {red:.0%}). Whole DDIM-10 sampling on a CPU, "
                     f"{threads} thread, each model in its fastest runtime: " + (said or "not benchmarked") + ".")
        for r in level:
            name = r["kind"] + (f" ({r['importance']})" if r["importance"] else "")
            conv = ""
            if r["kind"] == "ticket":
                conv = (f"; T -> 1.5 T FID change {_check(r)}" if r.get("convergence_overall")
                        else "; convergence check not recorded yet")
            lines.append(f"  - {name}: FID {_fmt(r['ratio_to_dense_mean'])}x dense ({r['seeds']} seed"
                         f"{'s' * (r['seeds'] != 1)}), "
                         f"{'matches' if r['matches_dense'] else 'misses'} dense{conv}")
            b1 = dict(speed).get(1)
            if r["matches_dense"] and red >= 0.5 and b1 and 1 / b1["speedup"] <= 0.6:
                goal.append(f"{name} at {reached:.0%} fewer MACs")
        best = min(level, key=lambda r: r["ratio_to_dense_mean"] if r["ratio_to_dense_mean"] is not None else math.inf)
        lines.append(f"  - best at this level: {best['kind']}" + (f" ({best['importance']})" if best["importance"] else "")
                     + f", FID {_fmt(best['ratio_to_dense_mean'])}x dense")
    lines.append("- Goal (>= 50 % fewer MACs, FID within dense + 1 std, batch-1 sampling <= 0.6x dense's): "
                 + (f"reached by {', '.join(goal)}." if goal else "not reached by any recorded network."))
    return "\n".join(lines)


def update_readme(path: str | Path, summary: str, tag: str = "study") -> Path:
    """Replace the text between ``<!-- tag -->`` and ``<!-- /tag -->`` in ``path`` with ``summary``
    (atomically; everything else is kept byte for byte)."""
    from lthdiff.store.io import atomic_path

    path = Path(path)
    text = path.read_text()
    start, end = f"<!-- {tag} -->\n", f"\n<!-- /{tag} -->"
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(f"{path} needs exactly one '<!-- {tag} -->' line and one '<!-- /{tag} -->' line after it")
    a, b = text.index(start) + len(start), text.index(end)
    with atomic_path(path) as tmp:
        tmp.write_text(text[:a] + summary.strip() + text[b:])
    return path


