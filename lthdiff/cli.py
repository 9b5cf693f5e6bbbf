"""``lthdiff`` command line: train, imp, prune, sample, eval, report, run.

Each subcommand is a thin wrapper over the library calls the notebooks use.  Under
``accelerate launch`` the training inside every subcommand runs data-parallel.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from .config import ConfigError, IMPConfig


def _common_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="digits", help="digits, mnist5k (offline; mnist5k: image size 28 or 32), mnist, "
                                                   "fashion-mnist, cifar10, flowers102, folder, synthetic-lung-ct (offline, procedural)")
    p.add_argument("--image-size", type=int, default=16, help="image side in pixels (default 16)")
    p.add_argument("--data-root", default="data", help="where torchvision datasets live / download to")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lthdiff", description="Lottery tickets in diffusion models.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="the whole pipeline from a config (built-in quickstart without one)")
    p.add_argument("config", nargs="?", help="a .toml/.json/.yaml config, or a shipped one by name (lthdiff/configs/: mnist, cifar10, ...); default: quickstart")
    p.add_argument("--quick", action="store_true", help="tiny sizes: finishes in ~2 minutes on a CPU")
    p.add_argument("--run-dir", help="override [output] run_dir")
    p.add_argument("--registry", help="override [output] registry (SQLite file)")

    p = sub.add_parser("train", help="train a dense DDPM and save it (save_pretrained folder)")
    _common_data(p)
    p.add_argument("--preset", default="tiny", help="UNet preset: tiny, mnist32, small, ddpm-cifar10")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder (checkpoints in OUT/ckpt, model in OUT/model)")

    p = sub.add_parser("imp", help="iterative magnitude pruning with rewinding")
    _common_data(p)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--pretrained", default="", help="start from this UNet (folder or Hub id) instead of a preset")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prune-per-round", type=float, default=IMPConfig().prune_per_round)
    p.add_argument("--rewind", default="init", help="init | step:K | none")
    p.add_argument("--steps-per-round", type=int, default=800)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--scope", default="global", choices=["global", "layer"])
    p.add_argument("--allocation", default=None, help="uniform | erk | jiang2023 (default: global ranking)")
    p.add_argument("--controls", default="random_reinit,random_mask",
                   help="comma-separated from random_reinit, random_mask, one_shot; '' for none")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-dir", required=True)

    p = sub.add_parser("prune", help="one-shot prune a saved model (magnitude, random or structured)")
    p.add_argument("model", help="a saved model folder")
    p.add_argument("--method", default="magnitude", choices=["magnitude", "random", "structured"])
    p.add_argument("--sparsity", type=float, default=0.9, help="fraction of eligible weights pruned (unstructured)")
    p.add_argument("--ratio", type=float, default=0.5, help="channel pruning ratio (structured)")
    p.add_argument("--importance", default="magnitude", help="structured: magnitude, taylor, diff_pruning, hsic")
    p.add_argument("--scope", default="global", choices=["global", "layer"])
    p.add_argument("--seed", type=int, default=0)
    _common_data(p)
    p.add_argument("--out", required=True)

    p = sub.add_parser("sample", help="sample images from a saved model into a PNG grid (+ .pt tensor)")
    p.add_argument("model")
    p.add_argument("-n", type=int, default=64)
    p.add_argument("--sampler", default="ddim", choices=["ddim", "ddpm"])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="samples.png")

    p = sub.add_parser("eval", help="FID/KID of a saved model against a dataset")
    p.add_argument("model")
    _common_data(p)
    p.add_argument("-n", type=int, default=2000)
    p.add_argument("--sampler", default="ddim", choices=["ddim", "ddpm"])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--feature-extractor", default="auto")

    p = sub.add_parser("report", help="HTML + Markdown report of a run directory (verdict first)")
    p.add_argument("run_dir")
    p.add_argument("more_runs", nargs="*", metavar="MORE_RUN_DIRS",
                   help="the same experiment with other seeds: the verdict averages over all runs (error bars)")
    p.add_argument("--registry", default=None)

    p = sub.add_parser("export", help="export a saved model folder to ONNX (ONNX Runtime serving)")
    p.add_argument("model", help="a saved model folder (save_pretrained)")
    p.add_argument("--onnx", required=True, metavar="OUT", help="the .onnx file to write")
    p.add_argument("--check", type=int, default=4, metavar="N",
                   help="compare ONNX Runtime with torch on N random inputs (0: skip)")

    p = sub.add_parser("study", help="the recorded multi-seed study: run, status, aggregate (lthdiff.study)")
    ss = p.add_subparsers(dest="study_command", required=True, metavar="STUDY_COMMAND")
    q = ss.add_parser("run", help="train, score and record the study's networks; resumes from the records")
    q.add_argument("config", help="a .toml/.json/.yaml config with a [study] section, or a shipped one by name")
    q.add_argument("--jobs", type=int, default=1, help="local workers side by side (one torch thread each)")
    q.add_argument("--backend", default="local", choices=["local", "ray"])
    q.add_argument("--address", default=None, help="with --backend ray: the cluster (default: a local one)")
    q.add_argument("--records", default=None, help="override [study] records (default ./studies)")
    q.add_argument("--seeds", type=int, nargs="+", default=None, help="override [study] seeds")
    q.add_argument("--run-root", default=None, help="override [study] run_root (run folders)")
    q.add_argument("--max-networks", type=int, default=-1, help="stop after this many networks (-1: all)")
    q = ss.add_parser("status", help="per seed: recorded, running, left, seconds a network, time left")
    q.add_argument("dir", help="a study's records folder (holds seed_<N>/)")
    q.add_argument("--run-root", default=None, help="its run folders, to show the running networks")
    q = ss.add_parser("aggregate", help="the study's Markdown/JSON aggregate from its records alone")
    q.add_argument("dir", help="a study's records folder (holds seed_<N>/)")
    q.add_argument("--out", default=None, help="where NAME.md/.json go (default: DIR)")
    q.add_argument("--readme", default=None, metavar="FILE",
                   help="put the summary between <!-- study --> and <!-- /study --> in FILE")
    q.add_argument("--registry", default=None, metavar="FILE", help="write the study's rows into this SQLite registry")
    q = ss.add_parser("widths", help="matching sparsity against width: the figure and summary of the width studies")
    q.add_argument("names", nargs="*", default=None, help="studies, narrowest first (default: the recorded width studies)")
    q.add_argument("--out", default="matching_vs_width.png", help="the figure (PNG)")
    q.add_argument("--readme", default=None, metavar="FILE",
                   help="put the summary between <!-- widths --> and <!-- /widths --> in FILE")
    q = ss.add_parser("structured", help="structured tickets vs scratch vs fine-tune: the figure and answer of a "
                      "study's structured arm, with the sampling speed of each architecture")
    q.add_argument("name", nargs="?", default="quality_digits_converged",
                   help="a recorded study or a records folder (default: quality_digits_converged)")
    q.add_argument("--serving", default=None, metavar="JSON",
                   help="a `python -m lthdiff.bench serving` result (default: the recorded one)")
    q.add_argument("--out", default="structured_tickets.png", help="the figure (PNG)")
    q.add_argument("--readme", default=None, metavar="FILE",
                   help="put the answer between <!-- structured --> and <!-- /structured --> in FILE")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lthdiff`` console script."""
    args = _parser().parse_args(argv)
    from .errors import DatasetUnavailableError
    from lthdiff.store.io import CorruptFileError

    try:
        return _dispatch(args)
    # OSError covers missing files and unreadable or corrupt model folders (CorruptFileError is one):
    # user input, not a bug; DatasetUnavailableError is a dataset that cannot be downloaded here.
    except (ConfigError, ValueError, OSError, DatasetUnavailableError, CorruptFileError) as exc:
        print(f"lthdiff {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _study(args: argparse.Namespace) -> int:
    """``lthdiff study run | status | aggregate``."""
    from lthdiff import study

    if args.study_command == "run":
        if args.jobs < 1:
            raise ConfigError(f"--jobs {args.jobs} is not accepted; accepted: an integer >= 1")
        spec = study.load_spec(args.config, records=args.records, seeds=args.seeds, run_root=args.run_root)
        study.spec.check_records(spec)
        print(f"[lthdiff] study {spec.name}: records {spec.dir}, run folders {spec.run_root}", flush=True)
        if args.backend == "ray":
            from lthdiff.study.ray_backend import run_ray

            n = run_ray(spec, address=args.address, max_networks=args.max_networks)
        else:
            argv = [args.config, "--records", str(spec.records), "--run-root", str(spec.run_root),
                    "--max-networks", str(args.max_networks), "--seeds", *map(str, spec.seeds)]
            n = study.run_local(spec, argv, jobs=args.jobs, max_networks=args.max_networks,
                                threads=spec.config.study.threads)
        print(f"[lthdiff] study {spec.name}: {n} networks this call; lthdiff study status {spec.dir}")
        return 0
    if args.study_command == "widths":
        return _widths(args)
    if args.study_command == "structured":
        return _structured(args)
    d = Path(args.dir)
    if not study.records.seed_dirs(d):
        raise ValueError(f"{d} holds no seed_<N>/ records: not a study's records folder")
    if args.study_command == "status":
        for s in study.status(d, args.run_root):
            eta = f"{s['hours_left_one_worker']:.1f} h" if s["hours_left_one_worker"] is not None else "unknown"
            per = f"{s['seconds_per_network']:.0f} s" if s["seconds_per_network"] is not None else "not measured"
            print(f"seed {s['seed']}: {s['recorded']} recorded, {len(s['running'])} running "
                  f"{s['running'] or ''}, {s['left']} left (next {s['next']}); {per} a network, ~{eta} left on one "
                  "worker" + (f"; trained elsewhere: {', '.join(s['other_machine'])}" if s["other_machine"] else ""))
        return 0
    from lthdiff.reporting.study import markdown, study_summary, update_readme
    from lthdiff.reporting.tables import write_results

    agg = study.aggregate_records(d)
    md = markdown(d.name, agg)
    write_results(args.out or d, d.name, agg, md)
    print(md)
    if args.readme:
        update_readme(args.readme, study_summary(agg))
    if args.registry:
        ids = study.aggregate.to_registry(d, args.registry)
        print(f"[lthdiff] registry {args.registry}: experiments {ids}")
    return 0


def _widths(args: argparse.Namespace) -> int:
    from lthdiff import study
    from lthdiff.reporting import plots
    from lthdiff.reporting.study import width_summary

    studies = study.width_studies(args.names or study.WIDTH_STUDIES)
    if not studies:
        raise ValueError(f"none of {args.names or list(study.WIDTH_STUDIES)} is recorded: nothing to plot")
    return _figure_and_block(plots.matching_vs_width(studies, title="matching sparsity against width (recorded "
                                                     "studies)"), width_summary(studies), args, tag="widths")


def _figure_and_block(fig: Any, text: str, args: argparse.Namespace, tag: str) -> int:
    """Save ``fig`` to ``args.out``, print ``text`` and put it between ``<!-- tag -->`` markers in ``args.readme``."""
    from lthdiff.reporting import plots
    from lthdiff.reporting.study import update_readme

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110, bbox_inches="tight")
    plots.close(fig)
    print(text)
    if args.readme:
        update_readme(args.readme, text, tag=tag)
    print(f"[lthdiff] figure {args.out}")
    return 0


def _structured(args: argparse.Namespace) -> int:
    import json

    from lthdiff import study
    from lthdiff.reporting import plots
    from lthdiff.reporting.study import structured_answer

    agg = study.recorded_study(args.name)
    if agg is None or not agg.get("structured"):
        raise ValueError(f"{args.name!r} holds no recorded structured network: nothing to plot (run its arm "
                         "'structured' first: lthdiff study run CONFIG)")
    # the recorded benchmark is read as a file: the library does not import the benchmarks (tests/test_layers.py)
    serving = json.loads(Path(args.serving or Path(__file__).resolve().parent / "bench" / "results" / "serving.json")
                         .read_text())
    return _figure_and_block(plots.structured_study(agg), structured_answer(agg["structured"], serving), args,
                             tag="structured")


def _dispatch(args: argparse.Namespace) -> int:
    from lthdiff.data.datasets import load_dataset

    if args.command == "study":
        return _study(args)
    if args.command == "export":
        from lthdiff.models.export import OnnxUNet, export_onnx
        from lthdiff.models.unets import load_model

        model = load_model(args.model)
        out = export_onnx(model, args.onnx)
        if args.check:
            import torch

            cfg = model.config
            g = torch.Generator().manual_seed(0)
            x = torch.randn(args.check, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g)
            t = torch.randint(0, 1000, (args.check,), generator=g)
            with torch.no_grad():
                diff = (OnnxUNet(out, cfg)(x, t).sample - model.eval()(x, t).sample).abs().max().item()
            print(f"ONNX Runtime vs torch on {args.check} random inputs: max |difference| {diff:.2e}")
        print(f"wrote {out}")
        return 0
    if args.command == "run":
        from .config import load_config, quickstart
        from .pipeline import run_pipeline

        cfg = load_config(args.config) if args.config else quickstart(quick=args.quick)
        if args.config and args.quick:
            from .config import quickstart as q

            quick = q(quick=True)
            cfg.train.steps, cfg.imp.rounds = quick.train.steps, min(cfg.imp.rounds, quick.imp.rounds)
            cfg.eval.n, cfg.eval.steps = quick.eval.n, quick.eval.steps
        if args.run_dir:
            cfg.output.run_dir = args.run_dir
        if args.registry:
            cfg.output.registry = args.registry
        run_pipeline(cfg)
        return 0
    if args.command == "report":
        from lthdiff.reporting.report import main as report_main

        return report_main([args.run_dir, *args.more_runs, *(["--registry", args.registry] if args.registry else [])])
    if args.command == "sample":
        import torch

        from lthdiff.models.unets import load_model
        from lthdiff.evaluation.sampling import image_grid, sample

        imgs = sample(load_model(args.model), args.n, sampler=args.sampler, steps=args.steps, seed=args.seed)
        image_grid(imgs, scale=4).save(args.out)
        torch.save(imgs, Path(args.out).with_suffix(".pt"))
        print(f"wrote {args.out}")
        return 0
    if args.command == "eval":
        from lthdiff.evaluation.metrics import fid
        from lthdiff.models.unets import load_model

        res = fid(load_model(args.model), args.dataset, n=args.n, sampler=args.sampler, steps=args.steps,
                  seed=args.seed, feature_extractor=args.feature_extractor, image_size=args.image_size)
        print(res.to_dict())
        return 0
    ds = load_dataset(args.dataset, image_size=args.image_size, root=args.data_root)
    if args.command == "train":
        from lthdiff.models.unets import save_model, unet
        from lthdiff.training.loop import train

        c = ds[0].shape[0]
        res = train(unet(args.preset, sample_size=args.image_size, in_channels=c, out_channels=c, seed=args.seed),
                    ds, args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                    checkpoint_dir=Path(args.out) / "ckpt", log_dir=Path(args.out) / "tb")
        save_model(res.sampling_model, Path(args.out) / "model")
        print(f"trained {res.steps} steps; model in {Path(args.out) / 'model'}")
        return 0
    if args.command == "imp":
        from lthdiff.lottery.imp import run_imp
        from lthdiff.models.unets import from_pretrained, unet

        c = ds[0].shape[0]
        model = from_pretrained(args.pretrained) if args.pretrained else unet(
            args.preset, sample_size=args.image_size, in_channels=c, out_channels=c, seed=args.seed)
        res = run_imp(model, ds, rounds=args.rounds, prune_per_round=args.prune_per_round, rewind=args.rewind,
                      steps_per_round=args.steps_per_round, batch_size=args.batch_size, scope=args.scope,
                      allocation=args.allocation, seed=args.seed, run_dir=args.run_dir,
                      controls=tuple(c for c in args.controls.split(",") if c))
        print(res.table().to_string(index=False))
        return 0
    if args.command == "prune":
        from lthdiff import masks, pruners
        from lthdiff.models.unets import load_model, save_model

        model = load_model(args.model)
        if args.method == "structured":
            pruned = pruners.structured(model, args.ratio, importance=args.importance, data=ds, seed=args.seed)
            save_model(pruned, Path(args.out) / "model")
        else:
            fn = pruners.magnitude if args.method == "magnitude" else pruners.random
            kw = {"scope": args.scope} if args.method == "magnitude" else {"seed": args.seed}
            mask = fn(model, args.sparsity, **kw)
            masks.apply(model, mask)
            save_model(model, Path(args.out) / "model")
            masks.save(Path(args.out) / "mask.safetensors", mask, metadata={"method": args.method})
        print(f"pruned model in {Path(args.out) / 'model'}")
        return 0
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
