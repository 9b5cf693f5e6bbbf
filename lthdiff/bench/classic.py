"""Classic lottery-ticket validation on a classifier: ``python -m lthdiff.bench classic``.

Reproduces the shape of Frankle & Carbin 2019 (arXiv:1803.03635), Fig. 1/3 on LeNet-300-100:
IMP with rewinding to initialisation, prune ``--prune`` (20 %) of each hidden layer per round and
the output layer at ``--output-factor`` (half) that rate, for ``--seeds`` seeds; test accuracy of the
ticket, the random-reinit control and the random-mask control vs the fraction of weights remaining.
Reports the smallest fraction at which the ticket keeps dense accuracy (mean >= dense mean - max(1
std, 0.5 pt), at that round and every denser one) and the ticket - control gaps there (paired by
seed, mean +- std).  Writes ``classic.json``, ``classic.md`` and ``classic.png`` under ``--out``;
IMP runs live in ``--work`` and resume when rerun with the same arguments.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

from lthdiff.reporting.tables import markdown_table
from .common import write_results

VARIANTS = ("ticket", "random_reinit", "random_mask")


def _run_seed(cfg: dict[str, Any], seed: int, work: str, progress: bool) -> tuple[list[dict[str, Any]], float]:
    """IMP for one seed, then the test accuracy of every network (one row each) and the training seconds."""
    import torch

    from lthdiff.evaluation import analysis as A
    from lthdiff.models import classifiers as CL
    from lthdiff import data as D
    from lthdiff.lottery.imp import run_imp

    torch.set_num_threads(1)
    train = D.load_labelled(cfg["dataset"], cfg["image_size"], "train")
    test = D.load_labelled(cfg["dataset"], cfg["image_size"], "test")
    channels = train[0][0].shape[0]
    model = CL.build(cfg["preset"], in_channels=channels, image_size=cfg["image_size"], seed=seed)
    alloc = CL.output_rate_allocation(model, cfg["prune"], cfg["output_factor"]) if cfg["output_factor"] != 1 else None
    result = run_imp(model, train, rounds=cfg["rounds"], steps_per_round=cfg["steps"], prune_per_round=cfg["prune"],
                     run_dir=Path(work) / f"seed_{seed}", rewind="init", scope="layer", allocation=alloc, seed=seed,
                     batch_size=cfg["batch_size"], lr=cfg["lr"], ema=False, task="classification",
                     progress=progress)
    df = A.imp_accuracy(result, test)
    df.insert(0, "seed", seed)
    train_seconds = sum(info.seconds for r in result.rounds for info in [r, *r.controls.values()])
    return df.to_dict("records"), train_seconds


def summarize(rows: list[dict[str, Any]], tolerance: float = 0.005) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-(round, variant) mean/std over seeds, and the "keeps dense accuracy" finding."""
    import pandas as pd

    df = pd.DataFrame(rows)
    table = []
    for rnd, part in df.groupby("round"):
        row: dict[str, Any] = {"round": int(rnd), "remaining_%": float(part["remaining"].mean() * 100)}
        for v in VARIANTS:
            acc = part[part["variant"] == ("ticket" if rnd == 0 else v)]["accuracy"] * 100
            row[f"{v}_mean"] = round(float(acc.mean()), 3)
            row[f"{v}_std"] = round(float(acc.std(ddof=1)), 3) if len(acc) > 1 else 0.0
        table.append(row)
    dense = table[0]
    threshold = dense["ticket_mean"] - max(dense["ticket_std"], tolerance * 100)

    def keeps(variant: str) -> dict[str, Any]:
        last = table[0]
        for row in table[1:]:
            if row[f"{variant}_mean"] < threshold:
                break
            last = row
        return last

    def gap(rnd: int, control: str) -> dict[str, float]:
        part = df[df["round"] == rnd].pivot(index="seed", columns="variant", values="accuracy")
        if control not in part:
            return {"mean": float("nan"), "std": float("nan")}
        d = (part["ticket"] - part[control]) * 100
        return {"mean": float(d.mean()), "std": float(d.std(ddof=1)) if len(d) > 1 else 0.0}

    kept = keeps("ticket")
    best = max(table, key=lambda r: r["ticket_mean"])
    finding = {
        "dense_accuracy_%": {"mean": dense["ticket_mean"], "std": dense["ticket_std"]},
        "threshold_%": threshold,
        "ticket_keeps_dense_down_to_remaining_%": kept["remaining_%"],
        "ticket_keeps_dense_round": kept["round"],
        "ticket_keeps_dense_through_last_round": kept["round"] == table[-1]["round"],
        "random_reinit_keeps_dense_down_to_remaining_%": keeps("random_reinit")["remaining_%"],
        "random_mask_keeps_dense_down_to_remaining_%": keeps("random_mask")["remaining_%"],
        "gap_to_random_reinit_pt": gap(kept["round"], "random_reinit"),
        "gap_to_random_mask_pt": gap(kept["round"], "random_mask"),
        "best_ticket": {"round": best["round"], "remaining_%": best["remaining_%"],
                        "mean": best["ticket_mean"], "std": best["ticket_std"]},
    }
    return table, finding


def _plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from lthdiff.reporting.plots import plot_accuracy
    from lthdiff.store.io import atomic_path

    fig, ax = plt.subplots(figsize=(7, 4.5))
    plot_accuracy(pd.DataFrame(rows), ax=ax, title=title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def _markdown(cfg: dict[str, Any], table: list[dict[str, Any]], f: dict[str, Any], seconds: float,
              train_seconds: float) -> str:
    cols = ["round", "remaining_%"] + [f"{v}_{s}" for v in VARIANTS for s in ("mean", "std")]
    g_r, g_m = f["gap_to_random_reinit_pt"], f["gap_to_random_mask_pt"]
    return (
        f"# Classic LTH validation: {cfg['preset']} on {cfg['dataset']} ({cfg['image_size']}x{cfg['image_size']})\n\n"
        f"IMP, rewind to init, {cfg['prune']:.0%} of each hidden layer per round (output layer x{cfg['output_factor']}),"
        f" {cfg['steps']} Adam steps (lr {cfg['lr']}, batch {cfg['batch_size']}) per round, {cfg['seeds']} seeds; "
        f"test accuracy (%) mean and std over seeds. Training time {train_seconds / 60:.1f} min (sum over all "
        f"networks, as recorded by run_imp, so a resumed run reports it too); this call's wall time {seconds / 60:.1f} min."
        "\n\n"
        + markdown_table(table, cols)
        + f"\nDense: {f['dense_accuracy_%']['mean']:.2f} +- {f['dense_accuracy_%']['std']:.2f} %. "
        f"Keeps dense accuracy (mean >= {f['threshold_%']:.2f} %, every denser round too): ticket down to "
        f"**{f['ticket_keeps_dense_down_to_remaining_%']:.2f} %** of weights remaining (round "
        f"{f['ticket_keeps_dense_round']}{', the last round run: more --rounds would find where it drops' if f['ticket_keeps_dense_through_last_round'] else ''}); random reinit down to {f['random_reinit_keeps_dense_down_to_remaining_%']:.2f} %;"
        f" random mask down to {f['random_mask_keeps_dense_down_to_remaining_%']:.2f} %.\n"
        f"At {f['ticket_keeps_dense_down_to_remaining_%']:.2f} %: ticket - random reinit = {g_r['mean']:+.2f} +- "
        f"{g_r['std']:.2f} pt, ticket - random mask = {g_m['mean']:+.2f} +- {g_m['std']:.2f} pt (paired by seed).\n"
        f"Best ticket: {f['best_ticket']['mean']:.2f} +- {f['best_ticket']['std']:.2f} % at "
        f"{f['best_ticket']['remaining_%']:.2f} % remaining.\n\n![accuracy vs weights remaining](classic.png)\n")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m lthdiff.bench classic", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=16, help="pruning rounds after the dense round 0")
    ap.add_argument("--steps", type=int, default=300, help="training steps per round")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1.2e-3)
    ap.add_argument("--prune", type=float, default=0.2, help="fraction of each hidden layer pruned per round")
    ap.add_argument("--output-factor", type=float, default=0.5, help="output layer rate = factor x --prune")
    ap.add_argument("--preset", default="lenet-300-100")
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes (1 thread each)")
    ap.add_argument("--out", default="bench_results")
    ap.add_argument("--work", default=None, help="IMP run folders (default: OUT/classic_runs/<config hash>)")
    args = ap.parse_args(argv)
    if args.seeds < 1 or args.rounds < 1 or args.jobs < 1:
        ap.error(f"--seeds, --rounds and --jobs must be >= 1, got {args.seeds}, {args.rounds}, {args.jobs}")

    import time

    from tqdm.auto import tqdm

    cfg = {k: getattr(args, k) for k in ("preset", "dataset", "image_size", "rounds", "steps", "batch_size", "lr",
                                         "prune", "output_factor")}
    tag = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:10]
    work = args.work or str(Path(args.out) / "classic_runs" / tag)
    cfg["seeds"] = args.seeds
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    train_seconds = 0.0
    if args.jobs == 1:
        for seed in range(args.seeds):
            seed_rows, secs = _run_seed(cfg, seed, work, progress=True)
            rows, train_seconds = rows + seed_rows, train_seconds + secs
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(_run_seed, cfg, s, work, False) for s in range(args.seeds)]
            for fut in tqdm(futures, desc="seeds"):
                seed_rows, secs = fut.result()
                rows, train_seconds = rows + seed_rows, train_seconds + secs
    seconds = time.perf_counter() - t0
    table, finding = summarize(rows)
    out = Path(args.out)
    title = f"{cfg['preset']} on {cfg['dataset']}: IMP, rewind to init ({args.seeds} seeds, mean +- std)"
    _plot(rows, out / "classic.png", title)
    md = _markdown(cfg, table, finding, seconds, train_seconds)
    write_results(out, "classic", {"config": cfg, "work_dir": work, "seconds": seconds,
                                   "train_seconds": train_seconds, "finding": finding,
                                   "table": table, "rows": rows}, md)
    print(md)
    return 0
