"""What is learned (the diffusion and classification tasks) and the one training loop (accelerate, EMA, checkpoints, masks kept at zero)."""

from . import tasks
from .tasks import ClassificationTask, DiffusionTask, Task, check_pair, make_scheduler, resolve_task
from . import loop
from .loop import MaskEnforcer, TrainResult, load_checkpoint, loss_at_start, train

__all__ = ["tasks", "ClassificationTask", "DiffusionTask", "Task", "check_pair", "make_scheduler",
           "resolve_task", "loop", "MaskEnforcer", "TrainResult", "load_checkpoint", "loss_at_start", "train"]
