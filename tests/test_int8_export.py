"""export(..., calibration=...): the float convolutions of a binary model in int8 (QDQ), checked against
ONNX Runtime's own static quantizer and its graph optimizer."""
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from torch import nn

import binarize
from binarize.converters import to_onnx
from binarize.converters.int8 import quantize_float_convs
from binarize.runtime import session


def batches(count, generator, size=16):
    return [torch.randn(4, 3, size, size, generator=generator) for _ in range(count)]


class Batches(CalibrationDataReader):
    def __init__(self, name, data):
        self.items = iter([{name: b.numpy()} for b in data])

    def get_next(self):
        return next(self.items, None)


def test_float_convs_quantize_as_onnxruntimes_own_static_quantizer_does(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
                          nn.ReLU(), nn.Conv2d(32, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    generator = torch.Generator().manual_seed(1)
    calibration, x = batches(4, generator), torch.randn(16, 3, 16, 16, generator=generator)
    proto = to_onnx(model, x[:1])
    name = proto.graph.input[0].name
    ours, count = quantize_float_convs(proto, calibration)
    assert count == 3
    (tmp_path / "float.onnx").write_bytes(proto.SerializeToString())
    quantize_static(str(tmp_path / "float.onnx"), str(tmp_path / "ort.onnx"), Batches(name, calibration),
                    quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    run = {label: ort.InferenceSession(data).run(None, {name: x.numpy()})[0] for label, data in
           (("float", proto.SerializeToString()), ("ours", ours.SerializeToString()),
            ("ort", str(tmp_path / "ort.onnx")))}
    scale = np.abs(run["float"]).max()
    error = {label: np.abs(run[label] - run["float"]).max() / scale for label in ("ours", "ort")}
    assert 0 < error["ours"] <= 1.5 * error["ort"] + 1e-3, error  # int8, and as close as ORT's own
    assert error["ours"] < 0.05
    # and in the form ONNX Runtime fuses into QLinearConv (it needs the bias scale x_scale * w_scale)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(ours.SerializeToString(), options)
    fused = Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    assert fused["QLinearConv"] == 3 and fused["Conv"] == 0, fused


def test_binary_model_keeps_its_binary_layers_and_onnxruntime_fuses_every_float_conv(tmp_path):
    torch.manual_seed(0)
    bnn = binarize.convert(torchvision.models.resnet18(num_classes=10), "xnor").eval()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 32, 32, generator=generator)
    plain = onnx.load(binarize.export(bnn, tmp_path / "plain.onnx", x[:1]))
    path = binarize.export(bnn, tmp_path / "int8.onnx", x[:1], calibration=batches(2, generator, 32))
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    output = session(path, sess_options=options).run(None, {plain.graph.input[0].name: x.numpy()})[0]
    assert output.shape == (2, 10) and np.isfinite(output).all()
    before = Counter(n.op_type for n in plain.graph.node)
    after = Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    assert before["Conv"] == 4  # the stem and the three 1x1 downsample convs stay float
    assert after["QLinearConv"] == before["Conv"] and after["Conv"] == 0
    assert after["BinaryConv2d"] == before["BinaryConv2d"] == 16


def test_calibration_without_batches_is_an_error_naming_it(tmp_path):
    bnn = binarize.convert(torchvision.models.resnet18(num_classes=10), "xnor").eval()
    with pytest.raises(ValueError, match="calibration= gave no batches"):
        binarize.export(bnn, tmp_path / "m.onnx", torch.randn(1, 3, 32, 32), calibration=[])
    assert not (tmp_path / "m.onnx").exists()
