"""binarize: turn a pretrained PyTorch network into a 1-bit network, fine-tune it, ship it as ONNX.

    import binarize
    bnn = binarize.convert(model, method="biper")
    print(binarize.summary(bnn, (1, 3, 224, 224)))
"""
from . import analysis, quantizers
from .config import ConvertConfig
from .convert import binary_layers, convert, extra_losses, set_stage
from .layers import BinaryConv2d, BinaryLayer, BinaryLinear
from .methods import METHODS
from .methods.biper import BiPerConfig
from .methods.bireal import BiRealConfig
from .methods.cbcn import CBCNConfig
from .methods.rbcn import RBCNConfig
from .methods.xnor import XnorConfig
from .passes import TraceError
from .summary import Summary, summary

__version__ = "0.1.0"

__all__ = ["convert", "set_stage", "extra_losses", "binary_layers", "summary", "Summary",
           "analysis", "quantizers", "ConvertConfig", "XnorConfig", "BiRealConfig", "BiPerConfig",
           "CBCNConfig", "RBCNConfig", "BinaryLayer", "BinaryConv2d", "BinaryLinear", "METHODS",
           "TraceError"]
