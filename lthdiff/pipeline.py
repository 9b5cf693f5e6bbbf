"""The main job: dense baseline -> IMP tickets (+ controls) -> FID -> registry -> report.

``lthdiff run`` and the notebooks call these functions; nothing here is notebook-only.  Every
stage skips work whose output already exists, so an interrupted run continues where it stopped
(training itself checkpoints inside a round).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable


from .config import Config, build_dataset, build_model
from lthdiff.store.io import read_json, write_json
from lthdiff.lottery.runs import IMPResult, RegistryLog, write_metrics

__all__ = ["run_pipeline", "evaluate_run", "efficiency"]


def _channels(result: Any) -> int:
    """Image channels of an IMP run's UNet, from its recorded config (no weights loaded)."""
    return int(result.config["model_config"]["in_channels"])


def evaluate_run(run_dir: str | Path, cfg: Config, *, on_metrics: Callable[[int, str, dict[str, Any]], None] | None = None,
                 progress: bool = True) -> list[dict[str, Any]]:
    """FID/KID of every round's ticket and controls (EMA weights), written to ``metrics.json`` beside each,
    plus, for every non-dense network, paired SSIM/PSNR/perceptual distance to the dense round-0 model
    (:func:`lthdiff.evaluation.metrics.paired_fidelity`, on ``max(16, min(256, n // 8))`` DDIM samples from shared noise).

    Rounds already evaluated with the same settings are skipped, so the stage resumes.  Metrics and
    sample grids also go to TensorBoard (``run_dir/tb``).  ``on_metrics(round, variant, payload)`` is
    called for every network, evaluated now or before, with what ``metrics.json`` holds (the pipeline
    records it in the registry through :class:`lthdiff.lottery.runs.RegistryLog`).
    """
    from lthdiff.evaluation.metrics import evaluate
    from lthdiff.evaluation.metrics.fidelity import resolve_extractor
    from lthdiff.evaluation.sampling import image_grid, sample

    result = IMPResult.load(run_dir)
    # The resolved name, not "auto": a cache computed with one extractor must not answer for another
    # (e.g. a run evaluated offline, then re-evaluated on Colab where Inception is reachable).
    extractor = resolve_extractor(cfg.eval.feature_extractor, _channels(result), reference=cfg.data.name)
    paired_n = max(16, min(256, cfg.eval.n // 8))
    settings = {"n": cfg.eval.n, "sampler": cfg.eval.sampler, "steps": cfg.eval.steps,
                "feature_extractor": extractor, "seed": cfg.train.seed, "paired_n": paired_n}
    from .tracking import tb
    from lthdiff.evaluation.metrics.paired_fidelity import dense_reference, paired_for

    dense = dense_reference(result, n=paired_n, steps=cfg.eval.steps, seed=cfg.train.seed)
    rows = []
    for rnd in result.rounds:
        for info in [rnd, *rnd.controls.values()]:
            path = info.dir / "metrics.json"
            cached = read_json(path) if path.exists() else None
            if cached is None or cached.get("settings") != settings:
                model = info.load_model(ema=True)
                images = sample(model, cfg.eval.n, sampler=cfg.eval.sampler, steps=cfg.eval.steps,
                                seed=cfg.train.seed, batch_size=cfg.eval.batch_size, progress=progress)
                image_grid(images[: cfg.eval.grid], scale=4).save(info.dir / "samples.png")
                res = evaluate(images, cfg.data.name, image_size=cfg.data.image_size,
                               feature_extractor=extractor)
                pair = None if rnd.round == 0 and info.variant == "ticket" else paired_for(dense, info.load_model())
                cached = write_metrics(info.dir, res.metrics, settings=settings, extractor=res.extractor, paired=pair)
                tb.log_eval(run_dir, rnd.round, info.variant, {**res.metrics, **(pair or {}).get("metrics", {})},
                            info.dir / "samples.png")
            if on_metrics is not None:
                on_metrics(rnd.round, info.variant, cached)
            rows.append({"round": rnd.round, "variant": info.variant, "sparsity": info.sparsity,
                         "final_loss": info.final_loss, **cached["metrics"], **cached.get("paired", {}).get("metrics", {}),
                         "extractor": cached["extractor"],
                         "perceptual_kind": cached.get("paired", {}).get("perceptual_kind")})
    return rows


def efficiency(run_dir: str | Path, cfg: Config, *, sampling_steps: int | None = None,
               repeats: int = 3) -> dict[str, Any]:
    """Parameters, MACs and file sizes of every round's ticket -> ``efficiency.json``.

    With ``sampling_steps``, each row also gets the measured sampling speed
    (:func:`lthdiff.evaluation.metrics.efficiency.sampling_speed`, batch 16, ``repeats`` timings).
    """
    from lthdiff.evaluation.metrics import efficiency as E

    result = IMPResult.load(run_dir)
    shape = (1, _channels(result), cfg.data.image_size, cfg.data.image_size)
    rows = []
    for rnd in result.rounds:
        model = rnd.load_model(ema=True)
        row = {"round": rnd.round, "sparsity": rnd.sparsity, **E.summary(model, shape, mask=rnd.load_mask())}
        if sampling_steps is not None:
            row.update(E.sampling_speed(model, batch_size=16, steps=sampling_steps, repeats=repeats))
        rows.append(row)
    out = {"rows": rows}
    write_json(Path(run_dir) / "efficiency.json", out)
    return out


def run_pipeline(cfg: Config, *, progress: bool = True) -> dict[str, Any]:
    """Run the whole main job for ``cfg``; return paths and the metrics table."""
    from lthdiff.lottery.imp import imp_allocation, run_imp
    from lthdiff.reporting.report import build

    t0 = time.perf_counter()
    run_dir = Path(cfg.output.run_dir)
    ds = build_dataset(cfg)
    unet = build_model(cfg, channels=ds[0].shape[0])
    log = RegistryLog(cfg.output.registry or None, run_dir)  # every registry row of this run is written through it
    print(f"[lthdiff] run dir {run_dir}; {len(ds)} images; {sum(p.numel() for p in unet.parameters()):,} parameters")
    result = run_imp(
        unet, ds, rounds=cfg.imp.rounds, steps_per_round=cfg.train.steps, run_dir=run_dir,
        prune_per_round=cfg.imp.prune_per_round, rewind=cfg.imp.rewind, scope=cfg.imp.scope,
        allocation=imp_allocation(cfg.imp.allocation), seed=cfg.train.seed,
        controls=tuple(cfg.imp.controls), batch_size=cfg.train.batch_size, lr=cfg.train.lr, ema=cfg.train.ema,
        exclude=cfg.imp.exclude or None, checkpoint_every=cfg.train.checkpoint_every, on_round=log,
        progress=progress)
    from .runtime import process_state

    if not process_state().is_main_process:  # under `accelerate launch`, training was data-parallel; the rest is not
        return {"run_dir": run_dir, "report": None, "markdown": None, "rows": [], "result": result}
    log.completed()
    print("[lthdiff] evaluating rounds (FID/KID)", flush=True)
    rows = evaluate_run(run_dir, cfg, on_metrics=log.metrics, progress=progress)
    efficiency(run_dir, cfg)
    paths = build(run_dir)
    log.report(paths.title, paths.html)
    write_json(run_dir / "pipeline.json", {"config": cfg.to_dict(), "seconds": time.perf_counter() - t0,
                                           "rows": rows})
    print(f"\n{paths.verdict}\n")
    print(f"[lthdiff] done in {time.perf_counter() - t0:.0f} s\n  report:      {paths.html}\n"
          f"  TensorBoard: tensorboard --logdir {run_dir / 'tb'}"
          + (f"\n  registry:    {cfg.output.registry}" if cfg.output.registry else ""), flush=True)
    return {"run_dir": run_dir, "report": paths.html, "markdown": paths.markdown, "rows": rows,
            "result": result}
