"""The networks: diffusers UNet presets, save/load, ONNX export for serving, the classic-LTH classifiers, MAC counting."""

from . import classifiers
from .classifiers import LeNet300100, LeNet5, PRESETS, build, output_layer, output_rate_allocation
from . import macs
from .macs import MACCount
from . import export
from .export import OnnxUNet, export_onnx
from . import unets
from .unets import from_pretrained, load_model, param_count, save_model, unet, with_state

__all__ = ["classifiers", "LeNet300100", "LeNet5", "PRESETS", "build", "output_layer",
           "output_rate_allocation", "macs", "MACCount", "unets", "from_pretrained", "load_model",
           "param_count", "save_model", "unet", "with_state", "export", "OnnxUNet", "export_onnx"]
