"""A study's aggregate, from its records alone: per sparsity and arm FID/KID mean +- std, FID / dense per seed,
seeds won by the ticket against each control and arm, the matching sparsity of every arm
(:func:`lthdiff.evaluation.verdict.matching_sparsity`: the highest sparsity whose mean FID stays within dense
mean + 1 std there and at every lower sparsity), the convergence check of the dense network (FID at T/2, T,
1.5 T, loss plateau) and of the longest-trained sparse networks, the loss at init, memorisation, and the
overlap of the arms' masks.  Refuses seeds whose settings differ.  Its Markdown and figures are in
:mod:`lthdiff.reporting.study`.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Sequence

from lthdiff import masks as M
from lthdiff.evaluation.verdict import aggregate, matching_sparsity, summarize
from . import records as R
from .arms import ARMS, mask_name, plan
from .spec import RECORDED

__all__ = ["loss_plateau", "converged", "convergence", "convergence_overall", "aggregate_records", "memorisation_table",
           "mask_overlap", "recorded_study", "to_registry",
           "longer_training", "structured_table"]

CHAINS = ("continue", "late")  # the arms beside the ticket's IMP chain, one network per pruned round


def loss_plateau(losses: Sequence[float], fraction: float = 0.1) -> dict[str, float]:
    """Mean training loss over the last ``fraction`` of steps vs the ``fraction`` before T/2.

    A converged run has ``ratio`` = late / mid close to 1 (a still-falling loss gives ratio < 1).
    """
    n = len(losses)
    w = max(1, int(round(n * fraction)))
    half = n // 2
    if half < w:
        raise ValueError(f"need at least {2 * w} losses for a {fraction:.0%} window before T/2, got {n}")
    mid = statistics.mean(losses[half - w:half])
    late = statistics.mean(losses[n - w:])
    return {"mid_mean": mid, "late_mean": late, "ratio": late / mid, "window": w, "steps": n}


def converged(fid_before: float, fid_after: float, loss_ratio: float, fid_tolerance: float,
              loss_tolerance: float = 0.05) -> bool:
    """Whether a dense run counts as converged: its FID moved by at most ``fid_tolerance`` between
    two lengths (the study: T and 1.5 T, tolerance max(dense FID std over seeds, 5 % of FID(T))) and its
    loss plateaued (a late/earlier mean-loss ratio within ``loss_tolerance`` of 1)."""
    return abs(fid_after - fid_before) <= fid_tolerance and abs(1 - loss_ratio) <= loss_tolerance


def convergence(seed: int, at_t: dict[str, Any], half: dict[str, Any] | None, cont: dict[str, Any] | None,
                std: float) -> dict[str, Any]:
    """One seed's convergence check of a network from its rows at T, T/2 and 1.5 T (either may be missing): FID at
    each, the mean loss over the last 10 % of 1.5 T against that of T, and :func:`converged` with tolerance
    max(``std``, 5 % of FID(T)) (``std``: dense FID's std over seeds)."""
    c = {"seed": seed, "steps": at_t["steps"], "fid_T": at_t["fid"], "kid_test_T": at_t.get("kid_test"),
         "fid_half": half["fid"] if half else None, "fid_1.5T": cont["fid"] if cont else None,
         "kid_test_1.5T": cont.get("kid_test") if cont else None}
    if cont:
        w = max(1, len(cont["loss_per_100_steps"]) // 10)  # 100-step means: a 10 % window of 1.5 T ...
        wt = max(1, len(at_t["loss_per_100_steps"]) // 10)  # ... and of T
        late = statistics.mean(cont["loss_per_100_steps"][-w:])
        now = statistics.mean(at_t["loss_per_100_steps"][-wt:])
        c.update({"loss_last10_T": now, "loss_last10_1.5T": late, "loss_ratio": late / now,
                  "fid_tolerance": max(std, 0.05 * at_t["fid"])})
        c["converged"] = converged(at_t["fid"], cont["fid"], c["loss_ratio"], c["fid_tolerance"])
    return c


def convergence_overall(conv: Sequence[dict[str, Any]], std: float) -> dict[str, Any] | None:
    """The study-level check over the seeds of :func:`convergence` that have 1.5 T: the mean FID change T -> 1.5 T
    (with its std), the worst loss ratio, the seeds within tolerance, and :func:`converged` on the means."""
    both = [c for c in conv if c.get("fid_1.5T") is not None]
    if not both:
        return None
    # Per seed, FID of one network at two nearby checkpoints moves by about the seed-to-seed std (in
    # both directions), so the study-level question is whether training longer helps *on average*.
    deltas = [c["fid_1.5T"] - c["fid_T"] for c in both]
    fid_t = statistics.mean(c["fid_T"] for c in both)
    ratio = max((c["loss_ratio"] for c in both), key=lambda r: abs(1 - r))
    overall = {"seeds": len(both), "fid_T_mean": fid_t, "fid_1.5T_mean": statistics.mean(c["fid_1.5T"] for c in both),
               "delta_mean": statistics.mean(deltas), "delta_std": statistics.stdev(deltas) if len(deltas) > 1 else 0.0,
               "deltas": deltas, "fid_tolerance": max(std, 0.05 * fid_t), "worst_loss_ratio": ratio,
               "seeds_within": sum(bool(c["converged"]) for c in both)}
    overall["converged"] = converged(fid_t, overall["fid_1.5T_mean"], ratio, overall["fid_tolerance"])
    return overall


def aggregate_records(study_dir: str | Path) -> dict[str, Any]:
    """The study's summary from its records alone (see the module doc); refuses mixed settings."""
    study_dir = Path(study_dir)
    dirs = R.seed_dirs(study_dir)
    settings = [R.read_settings(d) for d in dirs]
    common = R.check_same_settings(settings)
    rows = [row for d in dirs for row in R.read_networks(d)]
    chain = [x for x in rows if x["variant"] in ("ticket", *common["controls"])]
    if not any(x["round"] == 0 and x["variant"] == "ticket" for x in chain):
        raise ValueError(f"{study_dir} holds no dense (round 0) record yet; nothing to compare with")
    # the other arms are compared with the ticket the way a control is (seeds won, matching sparsity)
    controls = list(common["controls"]) + [a for a in CHAINS if any(x["variant"] == a for x in rows)]
    s = summarize([x for x in rows if x["variant"] in ("ticket", *controls)], controls)
    s["matching_test_kid"] = matching_sparsity([x for x in chain if "kid_test" in x], "kid_test")
    dense_std = s["matching"]["dense_std"]
    conv = []
    for d, st in zip(dirs, settings):
        by = {(x["round"], x["variant"]): x for x in R.read_networks(d)}
        if (0, "ticket") in by:
            conv.append(convergence(st["seed"], by[(0, "ticket")], by.get((0, "dense_half")),
                                    by.get((0, "dense_continued")), dense_std))
    overall = convergence_overall(conv, dense_std)
    init = {}
    for x in (x for x in rows if x["variant"] in ("ticket", *controls)):
        key = (round(x["sparsity"], 3), "dense" if x["round"] == 0 else x["variant"])
        init.setdefault(key, []).append(x["loss_at_init"])
    init_rows = [{"sparsity": k[0], "variant": k[1], "loss_at_init_mean": statistics.mean(v),
                  "loss_at_init_std": statistics.stdev(v) if len(v) > 1 else 0.0, "seeds": len(v)}
                 for k, v in sorted(init.items())]
    test = aggregate([x for x in rows if x["variant"] in ("ticket", *controls) and "kid_test" in x], "kid_test")
    expected = {st["seed"]: len(plan(st)) for st in settings}
    progress = {st["seed"]: sum(1 for x in R.read_networks(d) if x["variant"] not in CHAINS)
                for d, st in zip(dirs, settings)}
    extra = {"structured": structured_table(rows)} if any(x["variant"].startswith("structured_") for x in rows) else {}
    return {**extra, "settings": common, "seeds": [st["seed"] for d, st in zip(dirs, settings) if R.read_networks(d)],
            "rows": rows, **s, "convergence": conv, "convergence_overall": overall,
            "loss_at_init": init_rows, "kid_test_table": test, "mask_overlap": mask_overlap(study_dir),
            "memorisation": memorisation_table(rows),
            "networks_recorded": progress,
            "networks_planned": expected, "complete": all(progress[k] >= expected[k] for k in expected)}


def memorisation_table(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per sparsity and variant, the memorisation numbers the networks recorded
    (:func:`lthdiff.evaluation.memorisation.memorisation`), mean ± std over seeds, in pixels and in the extractor's
    features: the fraction of samples closer to a training image than the closest test image is, the copy rate
    (nearest-training distance below ``copy_fraction`` x the median test-to-train distance) and the median
    nearest-training distance of samples over that of test images (1: as novel as unseen images).  Networks
    scored before memorisation was recorded are left out."""
    groups: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for x in rows:
        if x.get("memorisation"):
            key = (round(x["sparsity"], 4), "dense" if x["round"] == 0 and x["variant"] == "ticket" else x["variant"])
            groups.setdefault(key, []).append(x["memorisation"])
    out = []
    for (sp, variant), ms in sorted(groups.items()):
        row: dict[str, Any] = {"sparsity": sp, "variant": variant, "seeds": len(ms), "copy_fraction": ms[0]["copy_fraction"]}
        for space in ("pixels", "features"):
            for k in ("closer_than_test", "copy_rate", "nn_ratio"):
                v = [m[space][k] for m in ms if m.get(space)]
                row[f"{space}_{k}_mean"] = statistics.mean(v) if v else None
                row[f"{space}_{k}_std"] = statistics.stdev(v) if len(v) > 1 else 0.0 if v else None
        out.append(row)
    return out


def mask_overlap(study_dir: str | Path) -> list[dict[str, Any]]:
    """Do the arms find the same weights?  Per round r >= 2 and pair of arms whose masks are recorded
    for a seed: the Jaccard overlap (IoU) of the kept weights (:func:`lthdiff.masks.similarity`,
    overall), mean +- std over seeds, and the overlap of two independent random masks of the same
    densities (:func:`lthdiff.masks.chance_jaccard`).  Read from the recorded masks alone."""
    import itertools


    found: dict[tuple[int, str, str], list[tuple[float, float, float]]] = {}
    for d in R.seed_dirs(study_dir):
        r = 2
        while paths := {arm: d / mask_name(arm, r) for arm in ARMS if (d / mask_name(arm, r)).exists()}:
            got = {arm: M.load_packed(path) for arm, path in paths.items()}
            for a, b in itertools.combinations(got, 2):
                row = M.similarity(got[a], got[b], by="overall").iloc[0]
                da, db = row["kept_a"] / row["total"], row["kept_b"] / row["total"]
                found.setdefault((r, a, b), []).append((float(row["jaccard"]), float(M.chance_jaccard(da, db)),
                                                        float(1 - da)))
            r += 1
    out = []
    for (r, a, b), v in sorted(found.items()):
        j = [x[0] for x in v]
        out.append({"round": r, "sparsity": statistics.mean(x[2] for x in v), "pair": f"{a} / {b}",
                    "jaccard_mean": statistics.mean(j), "jaccard_std": statistics.stdev(j) if len(j) > 1 else 0.0,
                    "seeds": len(j), "chance_jaccard": statistics.mean(x[1] for x in v)})
    return out


def _study_dir(name: str, records: str | Path) -> Path:
    """A records folder of the user's when ``name`` is one, else the study ``name`` under ``records``."""
    return Path(name) if Path(name).is_dir() and R.seed_dirs(Path(name)) else Path(records) / name


def recorded_study(name: str = "quality_digits_converged", records: str | Path = RECORDED) -> dict[str, Any] | None:
    """:func:`aggregate_records` of a study: ``name`` a study recorded in the package (``lthdiff/study/recorded/``,
    or in ``records``) or a records folder of the user's (``studies/my_study``); None when nothing of it is
    recorded yet (no dense network)."""
    d = _study_dir(name, records)
    if not R.seed_dirs(d):
        return None
    try:
        return aggregate_records(d)
    except ValueError as exc:
        if "no dense" in str(exc):
            return None
        raise


WIDTH_STUDIES = ("quality_digits_width_0.5x", "quality_digits_converged", "quality_digits_width_2x")


def width_studies(names: Sequence[str] = WIDTH_STUDIES, records: str | Path = RECORDED) -> list[dict[str, Any]]:
    """One protocol at several widths, for :func:`lthdiff.reporting.plots.matching_vs_width` (Rosenfeld et al. 2021
    ask the same of classifiers): per recorded study its aggregate, its UNet's parameter count (counted in the
    recorded dense weights) and a label with its widths and, while it runs, how many of its networks are recorded."""
    from safetensors import safe_open

    from lthdiff.models.unets import PRESETS

    out = []
    for name in names:
        agg = recorded_study(name, records)
        if agg is None:
            continue
        d = _study_dir(name, records)
        weights = next((w for sd in R.seed_dirs(d) for w in [sd / "weights_r00.safetensors"] if w.exists()), None)
        if weights is None:
            continue
        with safe_open(str(weights), "pt") as f:
            params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
        st = agg["settings"]
        widths = st.get("model", {}).get("block_out_channels") or PRESETS[st["preset"]]["block_out_channels"]
        label = "-".join(map(str, widths))
        if not agg["complete"]:
            done, planned = (sum(agg[k].values()) for k in ("networks_recorded", "networks_planned"))
            label += f", {done}/{planned} networks"
        out.append({"name": name, "params": params, "label": label, "agg": agg})
    return out


def to_registry(study_dir: str | Path, registry: str | Path) -> list[int]:
    """Write a study's records into a SQLite :class:`lthdiff.tracking.registry.Registry`: one experiment a seed
    (method ``study``, its records folder as the run directory, the settings as config), the overall sparsity
    of every network as its pruning log, and every row's scores as metrics under the study's extractor.
    Writes are upserts: running it again after more networks landed adds them, duplicates nothing."""
    from lthdiff.tracking.registry import Registry

    reg = Registry(registry)
    ids = []
    try:
        for d in R.seed_dirs(study_dir):
            st = R.read_settings(d)
            exp = reg.find_experiment(d)
            if exp is None:
                model = reg.get_or_create_model(st["preset"], {"preset": st["preset"], **(st.get("model") or {})})
                ds = reg.get_or_create_dataset(st["dataset"], image_size=st["image_size"])
                exp = reg.start_experiment(model, ds, "study", config={"study": Path(study_dir).name, **st},
                                           seed=st["seed"], run_dir=d)
            rows = R.read_networks(d)
            for x in rows:
                if x["variant"] == "ticket":
                    reg.log_round(exp, x["round"], {}, {"final_loss": x["final_loss"]}, sparsity=x["sparsity"])
                scores = {k: x[k] for k in ("fid", "kid", "fid_test", "kid_test", "final_loss", "loss_at_init",
                                            "sparsity") if isinstance(x.get(k), (int, float)) and math.isfinite(x[k])}
                reg.log_metrics(exp, x["round"], scores, extractor=st["extractor"],
                                settings={"n": st["n"], "sample_steps": st["sample_steps"], "steps": x["steps"]},
                                variant=x["variant"])
            planned = len(plan(st, ["ticket"] + [a for a in CHAINS if any(x["variant"] == a for x in rows)]))
            reg.set_status(exp, "completed" if len(rows) >= planned else "running")
            ids.append(exp)
    finally:
        reg.close()
    return ids



def longer_training(base_dir: str | Path, long_dir: str | Path) -> dict[str, Any]:
    """Are the sparse tickets converged?  A study trained longer (``long_dir``: its dense network and, on the base
    study's recorded masks, its tickets at a few sparsities, every network L steps) against the base study (T steps):
    per seed and sparsity the ticket's FID at T and at L, the dense FID at T and L (both from ``long_dir``: its
    ``dense_half`` is the same training stopped at L / 2 = T, so dense is compared on one machine), FID / dense at
    equal length, and the matching sparsity recomputed at L (:func:`lthdiff.evaluation.verdict.matching_sparsity`
    over the long study's dense and tickets).  Rows appear as networks land."""
    base = aggregate_records(base_dir)
    long_rows = [x for d in R.seed_dirs(long_dir) for x in R.read_networks(d)]
    settings = R.check_same_settings([R.read_settings(d) for d in R.seed_dirs(long_dir)])
    t_base = int(base["settings"]["steps"])
    by_base = {(x["seed"], round(x["sparsity"], 4)): x for x in base["rows"] if x["variant"] == "ticket"}
    dense_t = {x["seed"]: x["fid"] for x in long_rows if x["round"] == 0 and x["variant"] == "dense_half"}
    dense_l = {x["seed"]: x["fid"] for x in long_rows if x["round"] == 0 and x["variant"] == "ticket"}
    rows = []
    for x in sorted((x for x in long_rows if x["variant"] == "ticket" and x["round"] > 0),
                    key=lambda x: (x["sparsity"], x["seed"])):
        b = by_base.get((x["seed"], round(x["sparsity"], 4)))
        rows.append({"seed": x["seed"], "sparsity": x["sparsity"], "fid_T": b["fid"] if b else None,
                     "fid_L": x["fid"], "dense_T": dense_t.get(x["seed"]), "dense_L": dense_l.get(x["seed"]),
                     "ratio_T": b["ratio_to_dense"] if b and "ratio_to_dense" in b else None,
                     "ratio_L": x["fid"] / dense_l[x["seed"]] if x["seed"] in dense_l else None})
    for r in rows:  # at T the base study's own dense network (its machine) is the reference
        dense_base = next((y["fid"] for y in base["rows"] if y["seed"] == r["seed"] and y["round"] == 0
                           and y["variant"] == "ticket"), None)
        r["ratio_T"] = r["fid_T"] / dense_base if r["fid_T"] is not None and dense_base else None
    match = None
    chain = [x for x in long_rows if x["variant"] == "ticket"]
    if any(x["round"] == 0 for x in chain) and any(x["round"] > 0 for x in chain):
        match = matching_sparsity(chain)
    sp = sorted({r["sparsity"] for r in rows})
    mean = lambda v: statistics.mean(v) if v else None  # noqa: E731
    summary = [{"sparsity": s, "seeds": sum(r["sparsity"] == s for r in rows),
                "ratio_T_mean": mean([r["ratio_T"] for r in rows if r["sparsity"] == s and r["ratio_T"] is not None]),
                "ratio_L_mean": mean([r["ratio_L"] for r in rows if r["sparsity"] == s and r["ratio_L"] is not None])}
               for s in sp]
    dense = [{"seed": s, "fid_T": dense_t.get(s), "fid_L": dense_l[s]} for s in sorted(dense_l)]
    return {"steps_T": t_base, "steps_L": int(settings["steps"]), "rows": rows, "by_sparsity": summary,
            "dense": dense, "matching_L": match, "matching_T": base["matching"]}


def structured_table(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The structured arms (:class:`lthdiff.study.arms.Structured`) per MAC reduction, importance and kind: FID mean
    +- std over seeds, FID / dense per seed (the seed's own dense network), whether the mean stays within dense mean
    + 1 std (matches), the seeds the structured ticket wins against scratch (one network per reduction, importance
    None) and against its importance's fine-tune, the MACs of the small architecture, and for the ticket the
    convergence check dense gets (:func:`convergence` per seed and :func:`convergence_overall`; FID at T/2 and
    1.5 T from its ``half`` and ``continued`` networks)."""
    from .arms import STRUCTURED_CHECKS, STRUCTURED_KINDS, variant_class

    dense = {x["seed"]: x["fid"] for x in rows if x["round"] == 0 and x["variant"] == "ticket"}
    std = statistics.stdev(dense.values()) if len(dense) > 1 else 0.0
    bound = statistics.mean(dense.values()) + std if dense else None
    groups: dict[tuple[float, str, str], dict[int, dict[str, Any]]] = {}
    for x in rows:
        if x["round"] == 0 and x["variant"].startswith("structured_"):
            arm = variant_class(x["variant"], 0)
            groups.setdefault((arm.reduction, arm.importance, arm.kind), {})[x["seed"]] = x
    checks = {k: groups.pop(k) for k in [k for k in groups if k[2] in STRUCTURED_CHECKS]}
    out = []
    for (red, imp, kind), by_seed in sorted(groups.items(), key=lambda kv: (kv[0][0], STRUCTURED_KINDS.index(kv[0][2]),
                                                                             kv[0][1] or "")):
        fids = [x["fid"] for x in by_seed.values()]
        ratios = {s: x["fid"] / dense[s] for s, x in by_seed.items() if s in dense}
        row = {"reduction": red, "importance": imp, "kind": kind, "seeds": len(fids), "fid_mean": statistics.mean(fids),
               "fid_std": statistics.stdev(fids) if len(fids) > 1 else 0.0, "ratio_to_dense_per_seed": ratios,
               "ratio_to_dense_mean": statistics.mean(ratios.values()) if ratios else None,
               "matches_dense": bound is not None and statistics.mean(fids) <= bound,
               "macs_ratio": next(iter(by_seed.values())).get("macs_ratio")}
        if kind == "ticket":
            conv = [convergence(s, x, checks.get((red, imp, "half"), {}).get(s),
                                checks.get((red, imp, "continued"), {}).get(s), std) for s, x in sorted(by_seed.items())]
            row["convergence"], row["convergence_overall"] = conv, convergence_overall(conv, std)
            for other in ("scratch", "finetune"):
                o = groups.get((red, None if other == "scratch" else imp, other), {})
                common = [s for s in by_seed if s in o]
                row[f"wins_vs_{other}"] = (sum(by_seed[s]["fid"] < o[s]["fid"] for s in common), len(common))
        out.append(row)
    return out

