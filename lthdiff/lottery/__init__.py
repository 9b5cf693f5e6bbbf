"""Lottery tickets: the run directory (rounds, networks), one network of a chain (the engine), controls, iterative magnitude pruning with rewinding (Frankle & Carbin 2018; Frankle et al. 2019), early-bird tickets (You et al. 2020)."""

from . import runs
from .runs import (IMPResult, MUTABLE_ARGS, RegistryLog, RoundInfo, check_or_write_config, copy_network, final_loss,
                   network_dir, read_losses, read_metrics, rollback, run_tag, snapshot_dir, write_metrics, write_round)
from . import network
from .network import Job, train_network
from . import controls
from .controls import CONTROLS, Control, OneShot, RandomMask, RandomReinit, RoundContext, reinit
from . import imp
from .imp import geometric_schedule, imp_allocation, run_imp, sparsity_schedule
from . import early_bird
from .early_bird import EarlyBirdResult, PAPER_EPS, PAPER_WINDOW, find, mask_distance, retrain

__all__ = ["runs", "network_dir", "snapshot_dir", "network", "Job", "train_network", "IMPResult", "MUTABLE_ARGS", "RegistryLog", "RoundInfo", "check_or_write_config",
           "copy_network", "final_loss", "read_losses", "read_metrics", "rollback", "run_tag", "write_metrics",
           "write_round", "controls", "CONTROLS", "Control", "OneShot", "RandomMask", "RandomReinit",
           "RoundContext", "reinit", "imp", "geometric_schedule", "imp_allocation", "run_imp",
           "sparsity_schedule", "early_bird", "EarlyBirdResult", "PAPER_EPS", "PAPER_WINDOW", "find",
           "mask_distance", "retrain"]
