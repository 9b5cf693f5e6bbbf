"""What the pipeline scores: the stored FID is the EMA network's, recomputed here from the saved weights."""
import pytest

from lthdiff.config import Config
from lthdiff.lottery import run_imp
from lthdiff.evaluation import evaluate
from lthdiff.models import unet
from lthdiff.pipeline import evaluate_run
from lthdiff.lottery import IMPResult, read_metrics
from lthdiff.evaluation import sample


def test_stored_fid_is_the_ema_weights_fid(tmp_path, small_digits):
    run_imp(unet("tiny", seed=0, block_out_channels=(8, 16, 16), norm_num_groups=4), small_digits, rounds=1,
            steps_per_round=8, prune_per_round=0.5, controls=("random_reinit",), batch_size=16, lr=1e-2,
            run_dir=tmp_path, progress=False)
    cfg = Config()
    cfg.eval.n, cfg.eval.steps, cfg.eval.batch_size, cfg.eval.grid = 64, 3, 64, 16
    cfg.eval.feature_extractor = "lthdiff-digits"
    cfg.train.seed = 0
    evaluate_run(tmp_path, cfg, progress=False)
    rnd = IMPResult.load(tmp_path).rounds[1]
    for info in (rnd, rnd.controls["random_reinit"]):
        stored = read_metrics(info.dir)["fid"]

        def fid(ema: bool) -> float:
            # the protocol evaluate_run documents: n DDIM samples, sampling seed = training seed, vs the train split
            images = sample(info.load_model(ema=ema), cfg.eval.n, sampler=cfg.eval.sampler, steps=cfg.eval.steps,
                            seed=cfg.train.seed, batch_size=cfg.eval.batch_size, progress=False)
            return evaluate(images, "digits", image_size=16, feature_extractor="lthdiff-digits",
                            progress=False).metrics["fid"]

        assert stored == pytest.approx(fid(ema=True), rel=1e-6)
        assert stored != pytest.approx(fid(ema=False), rel=1e-3)  # the raw weights would score otherwise
