"""Old home of the classifier experiments, kept so ``lthdiff.classify`` imports keep working.

Each job now lives with its layer: networks in :mod:`lthdiff.classifiers`, the cross-entropy task in
:mod:`lthdiff.tasks`, accuracy in :mod:`lthdiff.analysis`, the plot in :mod:`lthdiff.plots`, labelled
loading in :mod:`lthdiff.data`.  Nothing inside the package imports this module.
"""
from __future__ import annotations

from .analysis import evaluate_accuracy as evaluate
from .analysis import imp_accuracy
from .classifiers import PRESETS, LeNet5, LeNet300100, build, output_layer, output_rate_allocation
from .data import load_labelled
from .plots import plot_accuracy
from .tasks import ClassificationTask

__all__ = ["PRESETS", "build", "ClassificationTask", "evaluate", "imp_accuracy", "output_layer",
           "output_rate_allocation", "load_labelled", "plot_accuracy", "LeNet300100", "LeNet5"]
