"""The ``binarize`` operator set is defined once (binarize/opset.py): the generated C++ header and
operator pages, the ONNX schemas, the kernel library's attribute checks and the runtime's version
check must all agree with that definition."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from binarize import opset, packing
from binarize.kernels import available_isas, last_kernel_isa, library_path

try:
    library_path()
except FileNotFoundError as error:
    pytest.fail(f"libbinarize_ort is not built: {error}", pytrace=False)

from binarize import runtime  # noqa: E402
from binarize.converters import register_schemas  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ISAS = available_isas()


def make_model(op: str, attributes: list, *, x_shape=(1, 8, 5, 5), w_shape=(4, 3, 3, 1), version: int = 1) -> bytes:
    """One binarize node with constant zero weights; ``attributes`` are AttributeProtos."""
    node = helper.make_node(op, ["X", "W", "multiplier", "bias"], ["Y"], domain="binarize")
    node.attribute.extend(attributes)
    m = w_shape[0]
    initializers = {"W": np.zeros(w_shape, np.int64), "multiplier": np.ones(m, np.float32),
                    "bias": np.zeros(m, np.float32)}
    graph = helper.make_graph(
        [node], op, [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(value, name) for name, value in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("binarize", version)])
    model.ir_version = 10
    return model.SerializeToString()


def plain_session(model: bytes, isa=None) -> ort.InferenceSession:
    """A session of plain ONNX Runtime with the library registered: only the C++ checks run."""
    options = ort.SessionOptions()
    if isa is not None:
        options.add_session_config_entry(runtime.ISA_CONFIG_KEY, isa)
    options.register_custom_ops_library(library_path())
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


A = helper.make_attribute
CONV = [A("kernel_shape", [3, 3]), A("in_channels", 8)]


# ---- one definition, derived files ------------------------------------------------------------

def test_generated_header_and_pages_are_up_to_date():
    """Regenerate kernels/src/op_definitions.h and kernels/ops/*.md: the committed files must match
    (run `python -m binarize.opset` after changing binarize/opset.py)."""
    for path, text in opset.generated_files().items():
        assert (ROOT / path).read_text() == text, f"{path} is stale: run python -m binarize.opset"
    assert opset.version_table() in (ROOT / "kernels/SPEC.md").read_text(), "kernels/SPEC.md version table is stale"


def test_onnx_schemas_are_the_definitions():
    register_schemas()
    for op in opset.OPS:
        schema = onnx.defs.get_schema(op.name, op.version, op.domain)
        assert schema.since_version == op.version
        assert [p.name for p in schema.inputs] == [p.name for p in op.inputs]
        optional = onnx.defs.OpSchema.FormalParameterOption.Optional
        assert [p.option == optional for p in schema.inputs] == [p.optional for p in op.inputs]
        assert {name: (a.required, a.type.name.lower()) for name, a in schema.attributes.items()} == \
            {a.name: (a.required, a.type) for a in op.attributes}


@pytest.mark.parametrize("op, name, value", [
    (op.name, attribute.name, value)
    for op in opset.OPS for attribute in op.attributes
    for value in ((attribute.minimum - 1, attribute.maximum + 1) if attribute.type == "int" else
                  ([attribute.minimum - 1] * attribute.length, [attribute.maximum + 1] * attribute.length,
                   [attribute.minimum] * (attribute.length + 1)))])
def test_library_limits_are_the_definitions(op, name, value):
    """Each attribute just outside its limits (or of the wrong length) is refused by the C++
    library with the very message the Python definition gives."""
    definition = opset.definition(op, opset.LATEST_VERSION)  # the library validates every version against it
    base = {"BinaryConv2d": {"kernel_shape": [3, 3], "in_channels": 8}, "BinaryLinear": {"in_features": 64}}[op]
    attributes = {**base, name: value}
    with pytest.raises(ValueError) as expected:
        definition.validate_attributes(attributes)
    shapes = {} if op == "BinaryConv2d" else {"x_shape": (2, 64), "w_shape": (3, 1)}
    with pytest.raises(Exception) as actual:
        plain_session(make_model(op, [A(k, v) for k, v in attributes.items()], **shapes))
    assert str(expected.value) in str(actual.value)


def test_library_reduction_limit_is_the_definition():
    attributes = {"kernel_shape": [46341, 46341], "in_channels": 1}  # 46341^2 > 2^31 - 1
    with pytest.raises(ValueError) as expected:
        opset.definition("BinaryConv2d", opset.LATEST_VERSION).validate_attributes(attributes)
    with pytest.raises(Exception) as actual:
        plain_session(make_model("BinaryConv2d", [A(k, v) for k, v in attributes.items()], x_shape=(1, 1, 5, 5),
                                 w_shape=(1, 1, 1, 1)))
    assert str(expected.value) in str(actual.value)


# ---- attribute types and unknown attributes -----------------------------------------------------

@pytest.mark.parametrize("attributes, message", [
    (CONV + [A("group", 2.0)], "attribute 'group' must be an int, got a float"),
    (CONV + [A("pads", 1)], "attribute 'pads' must be a list of 4 ints, got an int"),
    (CONV + [A("strides", [1.0, 1.0])], "attribute 'strides' must be a list of 2 ints, got a list of floats"),
    ([A("kernel_shape", "3x3"), A("in_channels", 8)], "attribute 'kernel_shape' must be a list of 2 ints, got a string"),
    ([A("kernel_shape", [3, 3]), A("in_channels", [8])], "attribute 'in_channels' must be an int, got a list of 1 ints"),
    (CONV + [A("in_features", 8)], "unknown attribute 'in_features'"),
])
def test_mistyped_or_foreign_attribute_is_refused_by_the_library(attributes, message):
    with pytest.raises(Exception, match=f"BinaryConv2d: {message}"):
        plain_session(make_model("BinaryConv2d", attributes))


def test_conv_attribute_on_linear_is_refused_by_the_library():
    model = make_model("BinaryLinear", [A("in_features", 64), A("pads", [1, 1, 1, 1])], x_shape=(2, 64), w_shape=(3, 1))
    with pytest.raises(Exception, match="BinaryLinear: unknown attribute 'pads'"):
        plain_session(model)


def test_unknown_attribute_is_refused_by_the_runtime():
    with pytest.raises(ValueError, match=r"unknown attribute\(s\) \['foo'\]"):
        runtime.session(make_model("BinaryConv2d", CONV + [A("foo", 1)]))


@pytest.mark.parametrize("op, attributes, shapes", [("BinaryConv2d", CONV, {}),
                                                    ("BinaryLinear", [A("in_features", 64)], dict(x_shape=(2, 64), w_shape=(3, 1)))])
def test_version_3_attribute_on_a_version_2_node_is_refused_by_the_runtime(op, attributes, shapes):
    """The kernel reads residual_relu whatever the node's version (it cannot see it): the runtime
    refuses it on a node of a version that does not define it, and accepts it on version 3."""
    relu = A("residual_relu", [1, 0])
    with pytest.raises(ValueError, match=rf"\({op} version 2\) has unknown attribute\(s\) \['residual_relu'\]"):
        runtime.session(make_model(op, attributes + [relu], version=2, **shapes))
    runtime.session(make_model(op, attributes + [relu], version=3, **shapes))


def test_version_4_activation_is_refused_below_version_4_and_on_binary_linear():
    """BinaryConv2d's activation exists from version 4 on; BinaryLinear has no version 4 (opset 4 is
    its version 3, without the attribute): the runtime refuses the attribute on both, and the
    library refuses it on BinaryLinear by itself (a convolution attribute)."""
    relu6 = A("activation", 2)
    with pytest.raises(ValueError, match=r"\(BinaryConv2d version 3\) has unknown attribute\(s\) \['activation'\]"):
        runtime.session(make_model("BinaryConv2d", CONV + [relu6], version=3))
    runtime.session(make_model("BinaryConv2d", CONV + [relu6], version=4))
    linear = make_model("BinaryLinear", [A("in_features", 64), relu6], version=4, x_shape=(2, 64), w_shape=(3, 1))
    with pytest.raises(ValueError, match=r"\(BinaryLinear version 3\) has unknown attribute\(s\) \['activation'\]"):
        runtime.session(linear)
    with pytest.raises(Exception, match="BinaryLinear: unknown attribute 'activation' \\(no version of BinaryLinear up to opset 4"):
        plain_session(linear)


def test_unknown_binarize_operator_is_refused_by_the_runtime():
    with pytest.raises(ValueError, match=r"the model \(bytes\): node 'Y': binarize opset version 1 has no operator "
                                         r"'BinaryConv3d'"):
        runtime.session(make_model("BinaryConv3d", CONV))


def with_inputs(model: bytes, names: list, extra: dict) -> bytes:
    """``model`` with its node's inputs renamed to ``names`` and ``extra`` initializers added."""
    proto = onnx.load_from_string(model)
    del proto.graph.node[0].input[:]
    proto.graph.node[0].input.extend(names)
    proto.graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in extra.items())
    return proto.SerializeToString()


V2_INPUTS = ["X", "W", "multiplier", "bias", "threshold", "residual"]


@pytest.mark.parametrize("version, names, message", [
    (1, V2_INPUTS, r"\(BinaryConv2d version 1\) has 6 inputs; it takes \['X', 'W', 'multiplier', 'bias'\]"),
    (1, V2_INPUTS[:4] + [""], r"\(BinaryConv2d version 1\) has 5 inputs"),
    (2, V2_INPUTS + ["residual"], r"\(BinaryConv2d version 2\) has 7 inputs; .*\(the last 2 optional\)"),
    (2, V2_INPUTS[:3], r"\(BinaryConv2d version 2\) has 3 inputs"),
    (3, V2_INPUTS + ["residual", "residual"], r"\(BinaryConv2d version 3\) has 8 inputs; .*\(the last 3 optional\)"),
])
def test_input_count_outside_the_version_is_refused_by_the_runtime(version, names, message):
    """ONNX Runtime resolves every version of a custom op to one schema, so the kernel cannot
    tell a version-1 node with version 2's inputs from a version-2 node: the runtime refuses it."""
    model = with_inputs(make_model("BinaryConv2d", CONV, version=version), names,
                        {"threshold": np.zeros(8, np.float32), "residual": np.zeros((1, 4, 3, 3), np.float32)})
    with pytest.raises(ValueError, match=message):
        runtime.session(model)


@pytest.mark.parametrize("name, value", [("threshold", np.zeros(8, np.float64)), ("threshold", np.zeros(8, np.int64)),
                                         ("residual", np.zeros((1, 4, 3, 3), np.float64))])
def test_version_2_input_of_another_type_is_an_error(name, value):
    names = V2_INPUTS[:4] + (["threshold"] if name == "threshold" else ["", "residual"])
    model = with_inputs(make_model("BinaryConv2d", CONV, version=2), names, {name: value})
    with pytest.raises(Exception, match=rf"{name}|Type Error"):
        session = plain_session(model)
        session.run(None, {"X": np.ones((1, 8, 5, 5), np.float32)})


def test_version_1_files_run_as_before():
    """A version-1 node (4 inputs) under this release: the version-1 formula (zero weights are all
    +1 and the input is positive: every tap adds +C, so D = 9 * 8 at each of the 3x3 outputs)."""
    x = np.abs(np.random.default_rng(0).standard_normal((1, 8, 5, 5))).astype(np.float32)
    for isa in ISAS:
        y = runtime.session(make_model("BinaryConv2d", CONV, version=1), isa=isa).run(None, {"X": x})[0]
        np.testing.assert_array_equal(y, np.full((1, 4, 3, 3), 72.0, np.float32))


@pytest.mark.parametrize("version", [0, 5, 99])
def test_unknown_opset_version_is_refused_naming_the_file(version, tmp_path):
    path = tmp_path / f"v{version}.onnx"
    path.write_bytes(make_model("BinaryConv2d", CONV, version=version))
    with pytest.raises(ValueError, match=rf"{path}.* imports binarize opset version {version}, .*supported versions: \[1, 2, 3, 4\]"):
        runtime.session(path)


# ---- the kernel path is chosen per session ------------------------------------------------------

def test_isa_choice_is_per_session_across_threads():
    """One thread forces each path in turn while another creates default sessions: each session
    gets exactly its own path (the issue saw 53-66 of 100 default sessions go wrong when the
    choice went through the process environment)."""
    rng = np.random.default_rng(0)
    w_signs = np.where(rng.random((4, 8, 3, 3)) < 0.5, -1.0, 1.0).astype(np.float32)
    model = make_model("BinaryConv2d", [A("kernel_shape", [3, 3]), A("in_channels", 8), A("pads", [1, 1, 1, 1])])
    proto = onnx.load_from_string(model)
    proto.graph.initializer[0].CopyFrom(numpy_helper.from_array(packing.pack_weight(w_signs), "W"))
    model = proto.SerializeToString()
    x = rng.standard_normal((1, 8, 5, 5)).astype(np.float32)
    expected = runtime.session(model, isa="reference").run(None, {"X": x})[0]
    default = os.environ.get("BINARIZE_ISA") or ISAS[0]
    wrong = {"forced": [], "default": []}

    def create(kind, isas):
        for isa in isas:
            sess = runtime.session(model, threads=1, isa=isa)
            got = last_kernel_isa()
            if got != (isa or default) or not np.array_equal(sess.run(None, {"X": x})[0], expected):
                wrong[kind].append((isa or default, got))

    threads = [threading.Thread(target=create, args=("forced", [ISAS[i % len(ISAS)] for i in range(30)])),
               threading.Thread(target=create, args=("default", [None] * 30))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == {"forced": [], "default": []}


@pytest.mark.parametrize("value, expected", [("scalar", "path scalar"), ("sse9", "BinaryConv2d: BINARIZE_ISA=sse9 is not one of")])
def test_environment_variable_is_the_default_for_sessions_without_isa(value, expected):
    script = ("import sys; from binarize import runtime, kernels\n"
              "try:\n"
              "    sess = runtime.session(sys.stdin.buffer.read())  # alive, so the library stays loaded\n"
              "    print('path', kernels.last_kernel_isa())\n"
              "except Exception as error:\n"
              "    print(error)\n")
    result = subprocess.run([sys.executable, "-c", script], input=make_model("BinaryConv2d", CONV), capture_output=True,
                            timeout=120, env={**os.environ, "BINARIZE_ISA": value})
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert expected in result.stdout.decode()
