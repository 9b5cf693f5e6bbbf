"""A study: the recorded, multi-seed lottery-ticket experiment on any dataset and model the library loads.

Bottom to top: ``spec`` (a config plus its ``[study]`` section; the recorded settings and where records go),
``records`` (the files of a study, the single source of truth), ``arms`` (one class a kind of network: dense,
its convergence checks, ticket, late rewinding, prune and continue, the controls; the plan), ``engine`` (one
network from the records to its row, through :func:`lthdiff.lottery.network.train_network`), ``queue`` (local
workers sharing the networks through lock files; status), ``ray_backend`` (the same plan as Ray tasks, the
driver the single writer of the records) and ``aggregate`` (the study's answer from its records).  The command
line: ``lthdiff study run | status | aggregate``.
"""

from . import spec
from .spec import RECORDED, StudySpec, check_records, load_spec, prepare_records, settings, spec_for
from . import records
from . import arms
from .arms import ARMS, LATE_FRACTION, check_arms, late_rewind_step, mask_name, plan
from . import engine
from .engine import SeedContext, run_network, score
from . import queue
from .queue import run_local, status, work
from . import aggregate
from .aggregate import WIDTH_STUDIES, aggregate_records, converged, loss_plateau, mask_overlap, recorded_study, width_studies

__all__ = ["spec", "RECORDED", "StudySpec", "check_records", "load_spec", "prepare_records", "settings", "spec_for",
           "records", "arms", "ARMS",
           "LATE_FRACTION", "check_arms", "late_rewind_step", "mask_name", "plan", "engine", "SeedContext",
           "run_network", "score", "queue", "run_local", "status", "work", "aggregate", "aggregate_records",
           "converged", "loss_plateau", "mask_overlap", "recorded_study",
           "WIDTH_STUDIES", "width_studies"]
