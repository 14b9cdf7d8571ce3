#include "attributes.h"

#include <stdexcept>
#include <string>
#include <vector>

#include "errors.h"
#include "op_definitions.h"

namespace binarize {
namespace {

// ORT's C API (version 21) cannot list a node's attributes or report their types, so both are
// probed: the int64-array getter succeeds for any attribute that exists (returning its INTS
// values, none for another type), the scalar getters succeed only for their own type.
bool has_attribute(const OrtApi& api, const OrtKernelInfo* info, const char* name, size_t& int_count) {
    int_count = 0;
    if (OrtStatus* status = api.KernelInfoGetAttributeArray_int64(info, name, nullptr, &int_count)) {
        api.ReleaseStatus(status);
        return false;
    }
    return true;
}

template <typename Getter>
bool probe(const OrtApi& api, Getter getter) {
    OrtStatus* status = getter();
    if (status == nullptr) return true;
    api.ReleaseStatus(status);
    return false;
}

// What a present attribute that is not of the expected type holds, for the error message.
std::string describe_attribute(const OrtApi& api, const OrtKernelInfo* info, const char* name, size_t int_count) {
    int64_t i = 0;
    float f = 0;
    size_t size = 0;
    if (probe(api, [&] { return api.KernelInfoGetAttribute_int64(info, name, &i); })) return "an int";
    if (probe(api, [&] { return api.KernelInfoGetAttribute_float(info, name, &f); })) return "a float";
    if (probe(api, [&] { return api.KernelInfoGetAttribute_string(info, name, nullptr, &size); })) return "a string";
    if (int_count > 0) return "a list of " + std::to_string(int_count) + " ints";
    if (probe(api, [&] { return api.KernelInfoGetAttributeArray_float(info, name, nullptr, &size); }) && size > 0)
        return "a list of floats";
    return "an empty list or a tensor, graph or string list";
}

// The values of one attribute (a single value for an int), validated against its definition.
std::vector<int64_t> read_attribute(const OrtApi& api, const OrtKernelInfo* info, const char* op,
                                    const AttributeDefinition& def) {
    size_t int_count = 0;
    if (!has_attribute(api, info, def.name, int_count)) {
        if (def.required) fail(op, "missing required attribute '", def.name, "'");
        return std::vector<int64_t>(def.default_values, def.default_values + def.length);
    }
    std::vector<int64_t> values;
    if (def.type == AttributeType::int_) {
        int64_t value = 0;
        if (!probe(api, [&] { return api.KernelInfoGetAttribute_int64(info, def.name, &value); }))
            fail(op, "attribute '", def.name, "' must be an int, got ", describe_attribute(api, info, def.name, int_count));
        if (value < def.minimum || value > def.maximum)
            fail(op, "attribute '", def.name, "' = ", value, " is not supported (", def.constraint, "; limits [",
                 def.minimum, ", ", def.maximum, "])");
        return {value};
    }
    if (int_count == 0)
        fail(op, "attribute '", def.name, "' must be a list of ", def.length, " ints, got ",
             describe_attribute(api, info, def.name, int_count));
    values.resize(int_count);
    Ort::ThrowOnError(api.KernelInfoGetAttributeArray_int64(info, def.name, values.data(), &int_count));
    bool valid = values.size() == static_cast<size_t>(def.length);
    for (int64_t v : values) valid = valid && v >= def.minimum && v <= def.maximum;
    if (!valid)
        fail(op, "attribute '", def.name, "' must be ", def.length, " ", def.constraint, " values <= ", def.maximum,
             ", got ", shape_string(values));
    return values;
}

template <size_t N>
const AttributeDefinition* find_definition(const AttributeDefinition (&defs)[N], const std::string& name) {
    for (const AttributeDefinition& def : defs)
        if (name == def.name) return &def;
    return nullptr;
}

template <size_t N>
const AttributeDefinition& definition_of(const AttributeDefinition (&defs)[N], const std::string& name) {
    if (const AttributeDefinition* def = find_definition(defs, name)) return *def;
    throw std::logic_error("op_definitions.h has no attribute " + name);  // a bug of this library
}

// Attributes that belong only to the other op (e.g. conv attributes on BinaryLinear) are refused.
template <size_t N, size_t M>
void refuse_foreign(const OrtApi& api, const OrtKernelInfo* info, const char* op,
                    const AttributeDefinition (&foreign)[N], const AttributeDefinition (&own)[M]) {
    size_t unused = 0;
    for (const AttributeDefinition& def : foreign)
        if (find_definition(own, def.name) == nullptr && has_attribute(api, info, def.name, unused))
            fail(op, "unknown attribute '", def.name, "' (no version of ", op, " up to opset ", kOpsetVersion, " has it)");
}

// v3's residual_relu: one flag per residual input.
template <size_t N>
void read_residual_relu(const OrtApi& api, const OrtKernelInfo* info, const char* op,
                        const AttributeDefinition (&defs)[N], ConvConfig& c) {
    const auto flags = read_attribute(api, info, op, definition_of(defs, "residual_relu"));
    c.residual_relu[0] = flags[0] != 0;
    c.residual_relu[1] = flags[1] != 0;
}

void check_reduction_size(const ConvConfig& c) {
    if (c.kernel_h * c.kernel_w > kMaxReduction / c.channels)
        fail(c.op, "reduction size kernel_h * kernel_w * channels = ", c.kernel_h, " * ", c.kernel_w, " * ",
             c.channels, " exceeds ", kMaxReduction);
}

}  // namespace

// One kernel serves every version of an op (ONNX Runtime resolves a custom op's versions to one
// schema, so a kernel cannot tell them apart); the versions share their attributes, validated
// against the newest definition.
ConvConfig read_conv_config(const OrtApi& api, const OrtKernelInfo* info) {
    const char* op = "BinaryConv2d";
    refuse_foreign(api, info, op, kBinaryLinearV3Attributes, kBinaryConv2dV4Attributes);
    auto read = [&](const char* name) { return read_attribute(api, info, op, definition_of(kBinaryConv2dV4Attributes, name)); };
    ConvConfig c{op, false, read("in_channels")[0]};
    const auto kernel = read("kernel_shape");
    const auto strides = read("strides");
    const auto pads = read("pads");
    const auto dilations = read("dilations");
    read("group");  // validated to be 1: there is nothing else to configure
    c.kernel_h = kernel[0], c.kernel_w = kernel[1];
    c.stride_h = strides[0], c.stride_w = strides[1];
    c.pad_top = pads[0], c.pad_left = pads[1], c.pad_bottom = pads[2], c.pad_right = pads[3];
    c.dilation_h = dilations[0], c.dilation_w = dilations[1];
    read_residual_relu(api, info, op, kBinaryConv2dV4Attributes, c);
    c.activation = static_cast<int>(read("activation")[0]);
    check_reduction_size(c);
    return c;
}

ConvConfig read_linear_config(const OrtApi& api, const OrtKernelInfo* info) {
    const char* op = "BinaryLinear";
    refuse_foreign(api, info, op, kBinaryConv2dV4Attributes, kBinaryLinearV3Attributes);
    ConvConfig c{op, true, read_attribute(api, info, op, definition_of(kBinaryLinearV3Attributes, "in_features"))[0]};
    read_residual_relu(api, info, op, kBinaryLinearV3Attributes, c);
    return c;
}

}  // namespace binarize
