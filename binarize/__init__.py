"""binarize: turn a pretrained PyTorch network into a 1-bit network, fine-tune it, ship it as ONNX.

    import binarize
    bnn = binarize.convert(model, method="biper")
    print(binarize.summary(bnn, (1, 3, 224, 224)))
"""
from . import analysis, datasets, kernels, quantizers, runtime
from .config import ConvertConfig
from .convert import binary_layers, convert, extra_losses, set_stage
from .layers import BinaryConv2d, BinaryLayer, BinaryLinear
from .methods import METHODS
from .methods.biper import BiPerConfig
from .methods.bireal import BiRealConfig
from .methods.cbcn import CBCNConfig
from .methods.rbcn import RBCNConfig
from .methods.xnor import XnorConfig
from .finetune import FinetuneConfig, History, finetune
from .passes import TraceError
from .summary import Summary, summary

__version__ = "0.1.0"

def export(model, path, example_input, **options):
    """Export a binary model to an ONNX file with bit-packed ops: :func:`binarize.converters.export`.
    Imported on first use, because the exporter loads torch.onnx and onnxscript."""
    from .converters import export as export_onnx

    return export_onnx(model, path, example_input, **options)


__all__ = ["convert", "set_stage", "extra_losses", "binary_layers", "summary", "Summary", "finetune",
           "FinetuneConfig", "History", "export", "analysis", "datasets", "kernels", "quantizers",
           "runtime", "ConvertConfig", "XnorConfig", "BiRealConfig", "BiPerConfig", "CBCNConfig",
           "RBCNConfig", "BinaryLayer", "BinaryConv2d", "BinaryLinear", "METHODS", "TraceError"]
