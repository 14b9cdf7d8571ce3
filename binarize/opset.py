"""The ``binarize`` ONNX operator set, defined once.

Each :class:`OpDefinition` is one version of one operator: its domain and version, inputs and
outputs, attributes with their types, defaults and limits, the attribute validation and the
output-shape rule. Everything else is derived from these objects:

- ``binarize.converters.schemas`` builds the ONNX schemas (``onnx.checker``, shape inference);
- ``binarize.converters.ops`` names the ONNX nodes the PyTorch custom ops translate to (their eager
  implementation is the reference semantics, tested against the C++ kernels);
- :func:`binarize.runtime.session` refuses models that import a version not listed here or whose
  binarize nodes carry unknown or mistyped attributes;
- ``python -m binarize.opset`` writes the operator pages (``kernels/ops/``; the version table of
  ``kernels/SPEC.md`` is checked) and the C++ header
  ``kernels/src/op_definitions.h`` that the kernel library validates against; a test fails when
  the committed files differ from what this module generates.

An exported file is a contract: changing an operator means adding a new ``OpDefinition`` with a
higher version (and its kernel), never editing a released one.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

__all__ = ["DOMAIN", "OpDefinition", "Attribute", "Parameter", "OPS", "SUPPORTED_VERSIONS", "LATEST_VERSION",
           "BINARY_CONV2D_V1", "BINARY_LINEAR_V1", "BINARY_CONV2D_V2", "BINARY_LINEAR_V2",
           "BINARY_CONV2D_V3", "BINARY_LINEAR_V3", "BINARY_CONV2D_V4", "ACTIVATIONS", "definition",
           "conv_output_size", "MAX_SPATIAL", "MAX_REDUCTION", "MAX_PADDED_IMAGE_WORDS", "check_opset_version", "write_generated"]

DOMAIN = "binarize"

#: Largest kernel size, stride, dilation and pad along an axis (keeps every geometry product far
#: from int64 overflow; real layers are orders of magnitude below).
MAX_SPATIAL = 65535
#: KH * KW * C: the kernels accumulate the dot product in 32-bit integers.
MAX_REDUCTION = 2**31 - 1
#: Words of one zero-padded, bit-packed input image ((H + pads) * (W + pads) * ceil(C/64)), i.e.
#: 2 GiB per image: bounds the buffer that hostile pads could otherwise make arbitrarily large.
MAX_PADDED_IMAGE_WORDS = 2**28

AttributeValue = Union[int, Tuple[int, ...]]


@dataclasses.dataclass(frozen=True)
class Attribute:
    """One attribute: ``type`` is ``"int"`` or ``"ints"`` (the ONNX INT / INTS types)."""

    name: str
    type: str
    doc: str
    required: bool = False
    default: Optional[AttributeValue] = None
    length: Optional[int] = None  # for ints: the exact number of values
    minimum: int = 0
    maximum: int = MAX_SPATIAL
    constraint: str = ""  # in words, for the operator page

    def validate(self, op: str, value: AttributeValue) -> AttributeValue:
        """``value`` if it satisfies this attribute's type and limits, else a ValueError naming both
        (the same wording as the C++ library's errors)."""
        if self.type == "int":
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{op}: attribute '{self.name}' must be an int, got {value!r}")
            if not self.minimum <= value <= self.maximum:
                raise ValueError(f"{op}: attribute '{self.name}' = {value} is not supported ({self.constraint}; "
                                 f"limits [{self.minimum}, {self.maximum}])")
            return value
        values = tuple(value) if isinstance(value, (list, tuple)) else None
        if values is None or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ValueError(f"{op}: attribute '{self.name}' must be a list of {self.length} ints, got {value!r}")
        if len(values) != self.length or not all(self.minimum <= v <= self.maximum for v in values):
            raise ValueError(f"{op}: attribute '{self.name}' must be {self.length} {self.constraint} values "
                             f"<= {self.maximum}, got {list(values)}")
        return values


@dataclasses.dataclass(frozen=True)
class Parameter:
    """An input or output: name, element type (``float32`` / ``int64``), shape in words, meaning;
    an ``optional`` input may be left out (an empty name in the node's input list)."""

    name: str
    dtype: str
    shape: str
    doc: str
    optional: bool = False


@dataclasses.dataclass(frozen=True)
class OpDefinition:
    name: str
    version: int
    summary: str
    inputs: Tuple[Parameter, ...]
    outputs: Tuple[Parameter, ...]
    attributes: Tuple[Attribute, ...]
    semantics: str  # Markdown, for the operator page
    errors: str     # Markdown, for the operator page
    torch_op: str   # the PyTorch custom op (binarize.converters.ops) whose eager code is the reference
    check_together: Optional[Callable[[str, Dict[str, AttributeValue]], None]] = None  # across attributes
    domain: str = DOMAIN

    @property
    def attribute_names(self) -> Tuple[str, ...]:
        return tuple(a.name for a in self.attributes)

    def validate_attributes(self, values: Mapping[str, AttributeValue]) -> Dict[str, AttributeValue]:
        """All attributes with defaults filled in; ValueError for a missing, unknown or invalid one."""
        unknown = sorted(set(values) - set(self.attribute_names))
        if unknown:
            raise ValueError(f"{self.name}: unknown attribute(s) {unknown} (version {self.version} has "
                             f"{list(self.attribute_names)})")
        result = {}
        for attribute in self.attributes:
            if attribute.name in values:
                result[attribute.name] = attribute.validate(self.name, values[attribute.name])
            elif attribute.required:
                raise ValueError(f"{self.name}: missing required attribute '{attribute.name}'")
            else:
                result[attribute.name] = attribute.default
        if self.check_together is not None:
            self.check_together(self.name, result)
        return result


def conv_output_size(size: int, pad_begin: int, pad_end: int, kernel: int, stride: int, dilation: int) -> int:
    """Output length of a convolution along one spatial axis (as ONNX Conv, floor rounding)."""
    return (size + pad_begin + pad_end - dilation * (kernel - 1) - 1) // stride + 1


def _check_reduction_size(op: str, attributes: Dict[str, AttributeValue]) -> None:
    """KH * KW * C within MAX_REDUCTION (the C++ library's check_reduction_size)."""
    kernel_h, kernel_w = attributes["kernel_shape"]
    if kernel_h * kernel_w * attributes["in_channels"] > MAX_REDUCTION:
        raise ValueError(f"{op}: reduction size kernel_h * kernel_w * channels = {kernel_h} * {kernel_w} * "
                         f"{attributes['in_channels']} exceeds {MAX_REDUCTION}")


_OUTPUT_TRANSFORM = (
    Parameter("multiplier", "float32", "[M]", "per-output-channel scale (the method's alpha / C* / mean absolute "
                                               "weight, times a folded BatchNorm's gamma / sqrt(var + eps))"),
    Parameter("bias", "float32", "[M]", "per-output-channel bias (the layer's bias and a folded BatchNorm's shift)"),
)

BINARY_CONV2D_V1 = OpDefinition(
    name="BinaryConv2d", version=1,
    summary="Y = multiplier * D + bias, D = the zero-padded correlation of sign(X) (sign(0) = +1) with "
            "the packed +-1 weights; padded taps contribute 0.",
    inputs=(Parameter("X", "float32", "[N, C, H, W]", "float input, binarized inside the op"),
            Parameter("W", "int64", "[M, KH, KW, ceil(C/64)]",
                      "signs packed along C per kernel tap: bit (c % 64) of W[m, kh, kw, c / 64] is 1 iff "
                      "weight[m, c, kh, kw] = -1"),
            *_OUTPUT_TRANSFORM),
    outputs=(Parameter("Y", "float32", "[N, M, OH, OW]", "OH = floor((H + pad_top + pad_bottom - "
                                                         "dilation_h*(KH-1) - 1) / stride_h) + 1, likewise OW"),),
    attributes=(
        Attribute("kernel_shape", "ints", "[KH, KW]", required=True, length=2, minimum=1, constraint="positive"),
        Attribute("in_channels", "int", "C", required=True, minimum=1, maximum=MAX_REDUCTION,
                  constraint="positive, equals X's dimension 1"),
        Attribute("strides", "ints", "[stride_h, stride_w]", default=(1, 1), length=2, minimum=1,
                  constraint="positive"),
        Attribute("pads", "ints", "[top, left, bottom, right] (ONNX order)", default=(0, 0, 0, 0), length=4,
                  constraint="non-negative"),
        Attribute("dilations", "ints", "[dilation_h, dilation_w]", default=(1, 1), length=2, minimum=1,
                  constraint="positive"),
        Attribute("group", "int", "groups", default=1, minimum=1, maximum=1, constraint="must be 1 in version 1"),
    ),
    semantics="""\
2-D convolution of the binarized input with ±1 weights, followed by a per-output-channel affine
transform. The input is zero-padded **after** binarization: taps that fall into padding contribute
0 (not ±1), exactly like `F.conv2d(sign(x), w, padding=...)`.

    ih = oh·sh - top + kh·dh,  iw = ow·sw - left + kw·dw
    D[n, m, oh, ow] = Σ over (kh, kw) with 0 <= ih < H and 0 <= iw < W of
                      Σ_c sign(X[n, c, ih, iw]) · Wpm[m, c, kh, kw]
    Y[n, m, oh, ow] = multiplier[m] · D + bias[m]

where Wpm is the unpacked ±1 weight. D is an exact integer (per in-bounds tap it is
C - 2·popcount(x_bits XOR w_bits)); the affine transform is computed in float32 from the integer
D (exact as long as |D| < 2^24). The reference implementation is the eager PyTorch op
`torch.ops.binarize.binary_conv2d` (`binarize.converters.ops`), tested against every kernel path.""",
    errors="""\
Missing `kernel_shape` / `in_channels`; an attribute of the wrong type, of the wrong length or
outside its limits; an attribute the operator does not have; `W` not of shape
[M, KH, KW, ceil(C/64)] or with non-zero unused bits; `multiplier` or `bias` not of shape [M];
`X` not of rank 4 or with dimension 1 != `in_channels`; an input smaller than the dilated kernel
(OH or OW < 1); a padded input image of more than 2^28 packed words.""",
    torch_op="binarize::binary_conv2d",
    check_together=_check_reduction_size,
)

BINARY_LINEAR_V1 = OpDefinition(
    name="BinaryLinear", version=1,
    summary="Y = multiplier * (sign(X) . W^T) + bias over the last axis of X (sign(0) = +1).",
    inputs=(Parameter("X", "float32", "[..., K] (rank >= 2)", "float input, binarized inside the op; "
                                                              "reduced over the last axis"),
            Parameter("W", "int64", "[M, ceil(K/64)]", "signs packed along K, bit 1 = -1"),
            *_OUTPUT_TRANSFORM),
    outputs=(Parameter("Y", "float32", "[..., M]", "X's shape with the last axis replaced by M"),),
    attributes=(
        Attribute("in_features", "int", "K", required=True, minimum=1, maximum=MAX_REDUCTION,
                  constraint="positive, equals X's last dimension"),
    ),
    semantics="""\
Fully connected layer on the binarized input:

    Y[..., m] = multiplier[m] · Σ_k sign(X[..., k]) · Wpm[m, k] + bias[m]

The reference implementation is the eager PyTorch op `torch.ops.binarize.binary_linear`
(`binarize.converters.ops`).""",
    errors="""\
Missing `in_features`; an attribute of the wrong type or outside its limits; an attribute the
operator does not have (e.g. a convolution attribute); `X` of rank < 2 or with last dimension != K;
`W` not [M, ceil(K/64)] or with non-zero unused bits; `multiplier` / `bias` not [M].""",
    torch_op="binarize::binary_linear",
)

# Version 2: two optional inputs. A threshold per input channel moves the binarization point
# (ReActNet's RSign, learnt by the layer's ``input_threshold``), and a residual is added after
# the per-channel transform, so a double skip's Add runs in the op's epilogue instead of as a
# separate pass over the output. Left out, both give exactly version 1.
_THRESHOLD_DOC = ("per-input-channel binarization point: the bit of x[c] is sign(x[c] - threshold[c]); "
                  "absent = 0 (version 1)")
_RESIDUAL_DOC = "added to Y after the per-channel transform (a double skip's shortcut); absent = 0"
_V2_SEMANTICS = """\
Version 1 with two optional inputs (absent, the result is exactly version 1's):

    t[c] = threshold[c] (0 when absent),  R = residual (0 when absent)
    sign(X[..., c]) of version 1 becomes sign(X[..., c] - t[c]), the difference in float32
    (sign(0) = +1, NaN -> -1; bit 1 iff X[..., c] - t[c] < 0 or is NaN)
    Y = multiplier[m] · D + bias[m] + R[..., m, ...]   (the sum in float32, in this order)

The residual has exactly Y's shape (no broadcasting)."""

BINARY_CONV2D_V2 = OpDefinition(
    name="BinaryConv2d", version=2,
    summary="Version 1 with an optional per-input-channel threshold (sign(X - threshold)) and an optional "
            "residual added to Y: Y = multiplier * D + bias + residual.",
    inputs=(*BINARY_CONV2D_V1.inputs,
            Parameter("threshold", "float32", "[C]", _THRESHOLD_DOC, optional=True),
            Parameter("residual", "float32", "[N, M, OH, OW]", _RESIDUAL_DOC, optional=True)),
    outputs=BINARY_CONV2D_V1.outputs,
    attributes=tuple(dataclasses.replace(a, constraint="must be 1") if a.name == "group" else a
                     for a in BINARY_CONV2D_V1.attributes),
    semantics=BINARY_CONV2D_V1.semantics.split("\n\nwhere Wpm")[0].replace(
        "transform. The input", "transform (version 1, then the two optional inputs below). The input") +
    "\n\n" + _V2_SEMANTICS + """ The threshold applies before the zero padding: padded taps
still contribute 0.

The reference implementation is the eager PyTorch op `torch.ops.binarize.binary_conv2d_v2`
(`binarize.converters.ops`), tested against every kernel path.""",
    errors=BINARY_CONV2D_V1.errors + """ Version 2 also: `threshold` not float32 of shape [C];
`residual` not float32 of exactly Y's shape.""",
    torch_op="binarize::binary_conv2d_v2",
    check_together=_check_reduction_size,
)

BINARY_LINEAR_V2 = OpDefinition(
    name="BinaryLinear", version=2,
    summary="Version 1 with an optional per-feature threshold (sign(X - threshold)) and an optional residual "
            "added to Y.",
    inputs=(*BINARY_LINEAR_V1.inputs,
            Parameter("threshold", "float32", "[K]", _THRESHOLD_DOC.replace("input channel", "input feature"),
                      optional=True),
            Parameter("residual", "float32", "[..., M]", _RESIDUAL_DOC, optional=True)),
    outputs=BINARY_LINEAR_V1.outputs,
    attributes=BINARY_LINEAR_V1.attributes,
    semantics="""\
Fully connected layer on the binarized input, version 1 plus the two optional inputs:

    Y[..., m] = multiplier[m] · Σ_k sign(X[..., k] - t[k]) · Wpm[m, k] + bias[m] + R[..., m]

""" + _V2_SEMANTICS + """

The reference implementation is the eager PyTorch op `torch.ops.binarize.binary_linear_v2`
(`binarize.converters.ops`).""",
    errors=BINARY_LINEAR_V1.errors + """ Version 2 also: `threshold` not float32 of shape [K];
`residual` not float32 of exactly Y's shape.""",
    torch_op="binarize::binary_linear_v2",
)

# Version 3: a second optional residual, and a ReLU on either residual. A Bi-Real double skip
# carries the block's activation, relu(x), and a basic block adds its identity shortcut to the
# second conv's output: with both in the epilogue, a residual block exports as its two binary
# ops, with no separate ReLU or Add pass over the feature map (benchmarks/RESULTS.md, "version 3").
# Left out (and residual_relu [0, 0]), the result is exactly version 2's.
_RESIDUAL_RELU = Attribute("residual_relu", "ints", "[for residual, for residual2]: 1 = add max(R, 0) instead of R",
                           default=(0, 0), length=2, minimum=0, maximum=1, constraint="0 or 1")
_V3_SEMANTICS = """\
Version 2 with a second optional residual and an optional ReLU on each (left out, and with
`residual_relu` = [0, 0], the result is exactly version 2's):

    R0 = residual, R1 = residual2
    Rk' = (Rk < 0 ? 0 : Rk) where residual_relu[k] = 1 (a ReLU: NaN and -0 pass unchanged), else Rk
    Y = ((multiplier[m] · D + bias[m]) + R0') + R1'   (float32, in this order; an absent Rk is not added)

Both residuals have exactly Y's shape (no broadcasting)."""


def _version3(v2: OpDefinition, residual_shape: str) -> OpDefinition:
    return OpDefinition(
        name=v2.name, version=3,
        summary="Version 2 with an optional second residual and a ReLU on either residual (residual_relu): "
                "Y = multiplier * D + bias + relu?(residual) + relu?(residual2).",
        inputs=(*v2.inputs, Parameter("residual2", "float32", residual_shape,
                                      "added after `residual` (a basic block's identity shortcut); absent = 0",
                                      optional=True)),
        outputs=v2.outputs,
        attributes=(*v2.attributes, _RESIDUAL_RELU),
        semantics=_V3_SEMANTICS + f"""

Everything else is version 2's ([{v2.name}-v2.md]({v2.name}-v2.md)). The reference implementation is the eager
PyTorch op `torch.ops.{v2.torch_op.replace('::', '.').replace('_v2', '_v3')}` (`binarize.converters.ops`), tested
against every kernel path.""",
        errors=v2.errors + """ Version 3 also: `residual2` not float32 of exactly Y's shape.""",
        torch_op=v2.torch_op.replace("_v2", "_v3"),
        check_together=v2.check_together,
    )


BINARY_CONV2D_V3 = _version3(BINARY_CONV2D_V2, "[N, M, OH, OW]")
BINARY_LINEAR_V3 = _version3(BINARY_LINEAR_V2, "[..., M]")

# Version 4 (BinaryConv2d only; BinaryLinear stays at version 3 in opset 4): `residual` may have
# another channel count than Y, in the two ratios of a parameter-free shortcut (ReActNet / Bi-Real)
# for a layer that widens or narrows the channels: its channels tiled, or adjacent groups of them
# averaged; and an activation may follow the sum (a MobileNet expansion's ReLU6 or HardSwish). The
# shortcut's Concat or ReduceMean and the activation are then no separate passes over the map
# (benchmarks/RESULTS.md, "Parameter-free shortcuts inside BinaryConv2d v4"). A residual of Y's
# shape and activation 0 give exactly version 3's result.
#: BinaryConv2d v4's ``activation`` codes.
ACTIVATIONS = {0: "none", 1: "ReLU", 2: "ReLU6", 3: "HardSwish"}
_ACTIVATION = Attribute("activation", "int",
                        "applied to Y last: " + ", ".join(f"{k} = {v}" for k, v in ACTIVATIONS.items()),
                        default=0, minimum=0, maximum=max(ACTIVATIONS),
                        constraint=", ".join(f"{k} {v}" for k, v in ACTIVATIONS.items()))
BINARY_CONV2D_V4 = OpDefinition(
    name="BinaryConv2d", version=4,
    summary="Version 3 with a residual of another channel count (C_r dividing M is tiled: Y channel m adds "
            "channel m mod C_r; M dividing C_r is averaged in adjacent groups of C_r / M channels) and an "
            "optional activation of Y (ReLU, ReLU6, HardSwish).",
    inputs=(*BINARY_CONV2D_V3.inputs[:5],
            Parameter("residual", "float32", "[N, C_r, OH, OW]",
                      "added to Y after the per-channel transform (a double skip's shortcut), C_r = M, C_r "
                      "dividing M (tiled) or M dividing C_r (group mean); absent = 0", optional=True),
            BINARY_CONV2D_V3.inputs[6]),
    outputs=BINARY_CONV2D_V3.outputs,
    attributes=(*BINARY_CONV2D_V3.attributes, _ACTIVATION),
    semantics="""\
Version 3 with two changes. First, `residual` (R0) may have C_r channels instead of M, where C_r divides
M or M divides C_r (N, OH and OW as Y's). The channel of R0' (version 3's R0 after its optional
ReLU, applied to every element of R0 first) that Y channel m adds is

    R0'[n, m mod C_r, oh, ow]                                  where C_r divides M (a widening
                                                               shortcut's channels, tiled)
    (Σ_{i < g} R0'[n, m·g + i, oh, ow]) / g,  g = C_r / M,     where M divides C_r (a narrowing
                                                               shortcut's adjacent groups, averaged;
                                                               summed in float32 in order of i)

so `BinaryConv2d(X, ..., residual=S)` equals version 3 with `residual = Concat([S] * (M / C_r), axis=1)`
or `residual = ReduceMean(Reshape(S, [N, M, g, OH, OW]), axes=[2])`. With C_r = M the result is
exactly version 3's. `residual2` keeps exactly Y's shape.

Second, `activation` applies to version 3's Y (after both residuals), in float32, NaN passing through:

    1 ReLU:       Y < 0 ? 0 : Y
    2 ReLU6:      Y < 0 ? 0 : (Y > 6 ? 6 : Y)          (ONNX Clip with min 0, max 6)
    3 HardSwish:  Y · max(0, min(1, Y / 6 + 1/2))       (ONNX HardSwish)

With activation 0 (the default) Y is version 3's.

Everything else is version 3's ([BinaryConv2d-v3.md](BinaryConv2d-v3.md)). The reference
implementation is the eager PyTorch op `torch.ops.binarize.binary_conv2d_v4`
(`binarize.converters.ops`), tested against every kernel path.""",
    errors=BINARY_CONV2D_V3.errors + """ Version 4: `residual` of rank 4 with N, OH and OW as Y's
and a channel count C_r that divides M or that M divides (else an error naming both counts);
`activation` outside 0 .. 3.""",
    torch_op="binarize::binary_conv2d_v4",
    check_together=BINARY_CONV2D_V3.check_together,
)

#: Every operator version, oldest first.
OPS: Tuple[OpDefinition, ...] = (BINARY_CONV2D_V1, BINARY_LINEAR_V1, BINARY_CONV2D_V2, BINARY_LINEAR_V2,
                                 BINARY_CONV2D_V3, BINARY_LINEAR_V3, BINARY_CONV2D_V4)
#: Versions of the ``binarize`` domain that a model may import.
SUPPORTED_VERSIONS: Tuple[int, ...] = tuple(sorted({op.version for op in OPS}))
#: The version new exports write.
LATEST_VERSION = SUPPORTED_VERSIONS[-1]


def definition(name: str, version: int) -> OpDefinition:
    """The definition of operator ``name`` in opset ``version`` of the domain (the newest op
    version <= ``version``, as ONNX resolves operator versions)."""
    candidates = [op for op in OPS if op.name == name and op.version <= version]
    if version not in SUPPORTED_VERSIONS or not candidates:
        raise ValueError(f"{DOMAIN} opset version {version} has no operator {name!r} (supported versions: "
                         f"{list(SUPPORTED_VERSIONS)})")
    return max(candidates, key=lambda op: op.version)


def check_opset_version(version: int, where: str) -> None:
    """ValueError naming ``where`` (a file) when it imports a ``binarize`` version no kernel implements."""
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"{where} imports {DOMAIN} opset version {version}, which this binarize release does "
                         f"not implement (supported versions: {list(SUPPORTED_VERSIONS)}); export the model "
                         f"again with this release or run it with the release that wrote it")


# --------------------------------------------------------------------------- generated files
_ROOT = Path(__file__).resolve().parent.parent
HEADER_PATH = Path("kernels/src/op_definitions.h")
PAGES_DIR = Path("kernels/ops")


def _default_text(attribute: Attribute) -> str:
    if attribute.default is None:
        return ""
    return str(list(attribute.default)) if attribute.type == "ints" else str(attribute.default)


def op_page(op: OpDefinition) -> str:
    """The Markdown page of one operator version."""
    def table(parameters: Sequence[Parameter]) -> str:
        rows = [f"| `{p.name}` | {p.dtype} | {p.shape} | {'(optional) ' if p.optional else ''}{p.doc} |"
                for p in parameters]
        return "\n".join(["| name | type | shape | description |", "|---|---|---|---|", *rows])

    attributes = [f"| `{a.name}` | {a.type} | {a.doc} | {'yes' if a.required else 'no'} | {_default_text(a)} | "
                  f"{a.constraint}; {a.minimum} <= value <= {a.maximum} |" for a in op.attributes]
    return "\n".join([
        f"<!-- Generated by `python -m binarize.opset` from binarize/opset.py; do not edit. -->",
        f"# {op.name} (version {op.version})", "",
        f"Domain `{op.domain}`, operator set version {op.version}. Conventions (sign, bit packing, errors, "
        f"limits) and the version table: [SPEC.md](../SPEC.md).", "",
        op.summary, "",
        "## Inputs", "", table(op.inputs), "",
        "## Outputs", "", table(op.outputs), "",
        "## Attributes", "",
        "| name | type | meaning | required | default | constraint |", "|---|---|---|---|---|---|", *attributes, "",
        "## Semantics", "", op.semantics, "",
        "## Errors", "", op.errors, ""])


def version_table() -> str:
    """The version table of kernels/SPEC.md (which the tests check is up to date)."""
    rows = [f"| [{op.name}](ops/{op.name}-v{op.version}.md) | {op.version} | {op.summary} |" for op in OPS]
    return "\n".join(["| operator | since version | summary |", "|---|---|---|", *rows])


def _cpp_attribute(op: OpDefinition, attribute: Attribute) -> str:
    default = attribute.default if attribute.default is not None else ()
    values = list(default) if isinstance(default, tuple) else [default]
    return (f'    {{"{attribute.name}", AttributeType::{attribute.type}, {str(attribute.required).lower()}, '
            f'{attribute.length or 1}, {attribute.minimum}, {attribute.maximum}LL, '
            f'{{{", ".join(str(v) for v in values)}}}, "{attribute.constraint}"}},')


def cpp_header() -> str:
    """kernels/src/op_definitions.h: the same definitions as constants for the C++ library."""
    lines = ["// Generated by `python -m binarize.opset` from binarize/opset.py; do not edit.",
             "// The kernel library validates attributes against these definitions (tests/test_ops.py",
             "// fails when this file and binarize/opset.py disagree).",
             "#pragma once", "", "#include <cstdint>", "", "namespace binarize {", "",
             f'constexpr const char* kDomain = "{DOMAIN}";',
             f"constexpr int kOpsetVersion = {LATEST_VERSION};",
             f"constexpr int64_t kMaxSpatial = {MAX_SPATIAL};",
             f"constexpr int64_t kMaxReduction = {MAX_REDUCTION}LL;",
             f"constexpr int64_t kMaxPaddedImageWords = {MAX_PADDED_IMAGE_WORDS}LL;", "",
             "enum class AttributeType { int_, ints };", "",
             "struct AttributeDefinition {",
             "    const char* name;",
             "    AttributeType type;",
             "    bool required;",
             "    int length;          // number of values (1 for an int)",
             "    int64_t minimum, maximum;",
             "    int64_t default_values[4];  // used when not required and absent",
             "    const char* constraint;     // in words, for error messages",
             "};", ""]
    for op in OPS:
        lines.append(f"// {op.name} version {op.version}")
        lines.append(f"constexpr int k{op.name}V{op.version}Version = {op.version};")
        lines.append(f"constexpr int k{op.name}V{op.version}Inputs = {len(op.inputs)};")
        lines.append(f"constexpr int k{op.name}V{op.version}RequiredInputs = "
                     f"{sum(not p.optional for p in op.inputs)};  // the others are optional")
        lines.append(f"constexpr AttributeDefinition k{op.name}V{op.version}Attributes[] = {{")
        lines.extend(_cpp_attribute(op, a).replace("AttributeType::int,", "AttributeType::int_,") for a in op.attributes)
        lines.extend(["};", ""])
    lines.extend(["}  // namespace binarize", ""])
    return "\n".join(lines)


def generated_files() -> Dict[Path, str]:
    """Repository-relative path -> content of every file derived from this module."""
    files = {HEADER_PATH: cpp_header()}
    files.update({PAGES_DIR / f"{op.name}-v{op.version}.md": op_page(op) for op in OPS})
    return files


def write_generated(root: Path = _ROOT) -> None:
    for path, text in generated_files().items():
        (root / path).write_text(text)


if __name__ == "__main__":  # python -m binarize.opset [repository root]
    write_generated(Path(sys.argv[1]) if len(sys.argv) > 1 else _ROOT)
