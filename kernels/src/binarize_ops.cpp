// ONNX Runtime custom ops of the `binarize` domain (kernels/SPEC.md): BinaryConv2d and
// BinaryLinear. This file holds everything that is not the inner loop: attribute and shape
// validation, the one-time weight reordering, the per-input-size geometry tables, instruction
// set dispatch and the split of the work over ORT's intra-op thread pool.
//
// The library is built against the ORT C API version 21 headers and never links
// libonnxruntime: the host process hands us its API table through RegisterCustomOps.
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "kernel_api.h"
#include "reference_kernels.h"
#if defined(BINARIZE_X86_KERNELS)
#include "x86_features.h"
#endif

#if defined(_WIN32)
#define BINARIZE_EXPORT __declspec(dllexport)
#else
#define BINARIZE_EXPORT __attribute__((visibility("default")))
#endif

namespace binarize {
namespace {

#define BINARIZE_STRINGIFY2(x) #x
#define BINARIZE_STRINGIFY(x) BINARIZE_STRINGIFY2(x)
#define ORT_API_VERSION_STRING BINARIZE_STRINGIFY(ORT_API_VERSION)

constexpr const char* kDomain = "binarize";
constexpr int kOpsetVersion = 1;

// ------------------------------------------------------------------------------------------
// Errors: every problem becomes an Ort::Exception that names the op; the CreateKernelV2 /
// KernelComputeV2 entry points turn it into an OrtStatus, so nothing ever unwinds into ORT.
// ------------------------------------------------------------------------------------------
template <typename... Parts>
[[noreturn]] void fail(const char* op, const Parts&... parts) {
    std::ostringstream message;
    message << op << ": ";
    (message << ... << parts);
    throw Ort::Exception(message.str(), ORT_INVALID_ARGUMENT);
}

std::string shape_string(const std::vector<int64_t>& shape) {
    std::ostringstream s;
    s << "[";
    for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
    s << "]";
    return s.str();
}

// ------------------------------------------------------------------------------------------
// Instruction set selection.
// ------------------------------------------------------------------------------------------
enum class Isa { reference, scalar, avx2, avx512, neon };

bool cpu_supports(Isa isa) {
    switch (isa) {
        case Isa::reference:
        case Isa::scalar:
            return true;
#if defined(BINARIZE_X86_KERNELS)
        case Isa::avx2:
            return cpu_has_avx2();
        case Isa::avx512:
            return cpu_has_avx512_popcount();
#endif
#if defined(BINARIZE_NEON_KERNELS)
        case Isa::neon:  // baseline on AArch64
            return true;
#endif
        default:
            return false;
    }
}

const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::reference: return "reference";
        case Isa::scalar: return "scalar";
        case Isa::avx2: return "avx2";
        case Isa::avx512: return "avx512";
        case Isa::neon: return "neon";
    }
    return "?";
}

const IsaKernels* isa_kernels(Isa isa) {
    switch (isa) {
        case Isa::scalar: return &isa_scalar::kernels;
#if defined(BINARIZE_X86_KERNELS)
        case Isa::avx2: return &isa_avx2::kernels;
        case Isa::avx512: return &isa_avx512::kernels;
#endif
#if defined(BINARIZE_NEON_KERNELS)
        case Isa::neon: return &isa_neon::kernels;
#endif
        default: return nullptr;
    }
}

// Fastest first; the reference path is only ever used when asked for.
constexpr Isa kFastIsas[] = {Isa::avx512, Isa::avx2, Isa::neon, Isa::scalar};

// BINARIZE_ISA is read when a kernel is created (session creation), so one process can hold
// sessions pinned to different paths, which is how the tests compare them.
Isa choose_isa(const char* op) {
    const char* requested = std::getenv("BINARIZE_ISA");
    if (requested == nullptr || *requested == '\0') {
        for (Isa isa : kFastIsas)
            if (cpu_supports(isa)) return isa;
        return Isa::scalar;
    }
    for (Isa isa : {Isa::reference, Isa::scalar, Isa::avx2, Isa::avx512, Isa::neon}) {
        if (std::string(requested) != isa_name(isa)) continue;
        if (!cpu_supports(isa)) fail(op, "BINARIZE_ISA=", requested, " is not supported by this CPU");
        return isa;
    }
    fail(op, "BINARIZE_ISA=", requested, " is not one of avx512, avx2, neon, scalar, reference");
}

// ------------------------------------------------------------------------------------------
// Attributes.
// ------------------------------------------------------------------------------------------
std::optional<std::vector<int64_t>> int_list_attribute(const OrtApi& api, const OrtKernelInfo* info, const char* name) {
    size_t size = 0;
    if (OrtStatus* status = api.KernelInfoGetAttributeArray_int64(info, name, nullptr, &size)) {
        api.ReleaseStatus(status);
        return std::nullopt;
    }
    std::vector<int64_t> values(size);
    if (size > 0) Ort::ThrowOnError(api.KernelInfoGetAttributeArray_int64(info, name, values.data(), &size));
    return values;
}

std::optional<int64_t> int_attribute(const OrtApi& api, const OrtKernelInfo* info, const char* name) {
    int64_t value = 0;
    if (OrtStatus* status = api.KernelInfoGetAttribute_int64(info, name, &value)) {
        api.ReleaseStatus(status);
        return std::nullopt;
    }
    return value;
}

// Convolution geometry shared by both ops; BinaryLinear is a 1x1 convolution over the rows of X.
struct ConvConfig {
    const char* op;
    int64_t channels;  // C (in_channels / in_features)
    int64_t kernel_h = 1, kernel_w = 1;
    int64_t stride_h = 1, stride_w = 1;
    int64_t pad_top = 0, pad_left = 0, pad_bottom = 0, pad_right = 0;
    int64_t dilation_h = 1, dilation_w = 1;

    int64_t channel_words() const { return (channels + 63) / 64; }
    int64_t taps() const { return kernel_h * kernel_w; }
};

ConvConfig read_conv_config(const OrtApi& api, const OrtKernelInfo* info) {
    const char* op = "BinaryConv2d";
    ConvConfig config{op, 0};
    const auto in_channels = int_attribute(api, info, "in_channels");
    if (!in_channels) fail(op, "missing required attribute 'in_channels'");
    if (*in_channels <= 0) fail(op, "attribute 'in_channels' must be positive, got ", *in_channels);
    config.channels = *in_channels;

    const auto kernel_shape = int_list_attribute(api, info, "kernel_shape");
    if (!kernel_shape) fail(op, "missing required attribute 'kernel_shape'");
    if (kernel_shape->size() != 2 || (*kernel_shape)[0] <= 0 || (*kernel_shape)[1] <= 0)
        fail(op, "attribute 'kernel_shape' must be 2 positive values, got ", shape_string(*kernel_shape));
    config.kernel_h = (*kernel_shape)[0];
    config.kernel_w = (*kernel_shape)[1];

    const auto strides = int_list_attribute(api, info, "strides").value_or(std::vector<int64_t>{1, 1});
    if (strides.size() != 2 || strides[0] <= 0 || strides[1] <= 0)
        fail(op, "attribute 'strides' must be 2 positive values, got ", shape_string(strides));
    config.stride_h = strides[0];
    config.stride_w = strides[1];

    const auto pads = int_list_attribute(api, info, "pads").value_or(std::vector<int64_t>{0, 0, 0, 0});
    if (pads.size() != 4 || std::any_of(pads.begin(), pads.end(), [](int64_t p) { return p < 0; }))
        fail(op, "attribute 'pads' must be 4 non-negative values [top, left, bottom, right], got ", shape_string(pads));
    config.pad_top = pads[0];
    config.pad_left = pads[1];
    config.pad_bottom = pads[2];
    config.pad_right = pads[3];

    const auto dilations = int_list_attribute(api, info, "dilations").value_or(std::vector<int64_t>{1, 1});
    if (dilations.size() != 2 || dilations[0] <= 0 || dilations[1] <= 0)
        fail(op, "attribute 'dilations' must be 2 positive values, got ", shape_string(dilations));
    config.dilation_h = dilations[0];
    config.dilation_w = dilations[1];

    const int64_t group = int_attribute(api, info, "group").value_or(1);
    if (group != 1) fail(op, "attribute 'group' = ", group, " is not supported (version 1 supports group = 1 only)");
    return config;
}

ConvConfig read_linear_config(const OrtApi& api, const OrtKernelInfo* info) {
    const char* op = "BinaryLinear";
    const auto in_features = int_attribute(api, info, "in_features");
    if (!in_features) fail(op, "missing required attribute 'in_features'");
    if (*in_features <= 0) fail(op, "attribute 'in_features' must be positive, got ", *in_features);
    return ConvConfig{op, *in_features};
}

// The kernels accumulate D in 32-bit integers: |D| <= KH * KW * C must fit.
const ConvConfig& check_reduction_size(const ConvConfig& config) {
    if (config.kernel_h * config.kernel_w > INT32_MAX / config.channels)
        fail(config.op, "reduction size kernel_h * kernel_w * channels = ", config.kernel_h, " * ", config.kernel_w, " * ",
             config.channels, " exceeds 2^31 - 1");
    return config;
}

// ------------------------------------------------------------------------------------------
// Weights: validated once and reordered into the [M/MB][K][MB] block layout of the hot loop.
// ------------------------------------------------------------------------------------------
struct Weights {
    const uint64_t* original = nullptr;  // the ONNX layout [M][KH][KW][CW] (for the reference path)
    std::vector<uint64_t> original_copy; // owns `original` when the weights were constant at creation
    int64_t out_channels = 0;
    int64_t out_channels_padded = 0;
    std::vector<uint64_t> blocked;       // [M_padded/MB][K][MB]
    std::vector<int64_t> tap_popcount;   // [M][taps]: popcount of the tap's words, for padding correction
};

// The W input must be [M, KH, KW, CW] (conv) or [M, CW] (linear) with zero unused high bits.
int64_t validate_weight_shape(const ConvConfig& config, bool linear, const std::vector<int64_t>& shape) {
    const std::vector<int64_t> tail = linear ? std::vector<int64_t>{config.channel_words()}
                                             : std::vector<int64_t>{config.kernel_h, config.kernel_w, config.channel_words()};
    if (shape.size() != tail.size() + 1 || !std::equal(tail.begin(), tail.end(), shape.begin() + 1) || shape[0] <= 0) {
        std::vector<int64_t> expected{-1};
        expected.insert(expected.end(), tail.begin(), tail.end());
        fail(config.op, "packed weight W has shape ", shape_string(shape), ", expected [M",
             shape_string(expected).substr(3), " (", config.channels, " input channels packed into ",
             config.channel_words(), " 64-bit words per ", linear ? "row" : "kernel tap", ")");
    }
    return shape[0];
}

void validate_weight_bits(const ConvConfig& config, const uint64_t* words, int64_t word_count) {
    const int64_t used_bits = config.channels % 64;
    if (used_bits == 0) return;
    const uint64_t unused_mask = ~uint64_t{0} << used_bits;
    const int64_t cw = config.channel_words();
    for (int64_t i = cw - 1; i < word_count; i += cw)
        if (words[i] & unused_mask)
            fail(config.op, "packed weight W has non-zero unused high bits in the last word of a channel group "
                            "(bits >= ", used_bits, " must be 0)");
}

void prepare_weights(const ConvConfig& config, const IsaKernels* kernels, const uint64_t* words,
                     int64_t out_channels, Weights& weights) {
    const int64_t cw = config.channel_words();
    const int64_t taps = config.taps();
    const int64_t steps = taps * cw;
    weights.original = words;
    weights.out_channels = out_channels;
    weights.tap_popcount.assign(out_channels * taps, 0);
    for (int64_t m = 0; m < out_channels; ++m)
        for (int64_t t = 0; t < taps; ++t)
            for (int64_t i = 0; i < cw; ++i)
                weights.tap_popcount[m * taps + t] += __builtin_popcountll(words[(m * taps + t) * cw + i]);
    if (kernels == nullptr) return;  // the reference path reads the original layout
    const int64_t block = kernels->channels_per_block;
    weights.out_channels_padded = (out_channels + block - 1) / block * block;
    weights.blocked.assign(weights.out_channels_padded * steps, 0);
    for (int64_t m = 0; m < out_channels; ++m)
        for (int64_t k = 0; k < steps; ++k)
            weights.blocked[((m / block) * steps + k) * block + m % block] = words[m * steps + k];
}

// ------------------------------------------------------------------------------------------
// Per-input-size tables of the hot loop (see the layout comment in isa_kernels.cpp).
// ------------------------------------------------------------------------------------------
struct Geometry {
    int64_t height = -1, width = -1;  // input size these tables are for
    int64_t out_h = 0, out_w = 0, padded_h = 0, padded_w = 0;
    std::vector<int64_t> step_offsets;   // [K]
    std::vector<int64_t> pixel_offsets;  // [Q]
    std::vector<int32_t> pixel_pattern;  // [Q]
    std::vector<int32_t> pattern_base;   // [patterns][M_padded] (|base| <= KH*KW*C < 2^31)
};

int64_t output_size(const ConvConfig& c, const char* axis, int64_t in, int64_t pad_begin, int64_t pad_end,
                    int64_t kernel, int64_t stride, int64_t dilation) {
    const int64_t span = dilation * (kernel - 1) + 1;
    if (in + pad_begin + pad_end < span)
        fail(c.op, "input ", axis, " ", in, " with pads ", pad_begin, "+", pad_end, " is smaller than the dilated kernel (",
             span, ")");
    return (in + pad_begin + pad_end - span) / stride + 1;
}

// For each output row (column), which kernel rows (columns) land inside the image. Output
// positions with the same validity set share a class; a pixel's padding pattern is the pair.
std::vector<int32_t> validity_classes(int64_t out, int64_t in, int64_t pad, int64_t kernel, int64_t stride,
                                      int64_t dilation, std::vector<std::vector<bool>>& class_valid) {
    std::map<std::vector<bool>, int32_t> ids;
    std::vector<int32_t> class_of(out);
    for (int64_t o = 0; o < out; ++o) {
        std::vector<bool> valid(kernel);
        for (int64_t k = 0; k < kernel; ++k) {
            const int64_t i = o * stride - pad + k * dilation;
            valid[k] = i >= 0 && i < in;
        }
        auto [it, inserted] = ids.emplace(valid, static_cast<int32_t>(class_valid.size()));
        if (inserted) class_valid.push_back(valid);
        class_of[o] = it->second;
    }
    return class_of;
}

std::shared_ptr<const Geometry> make_geometry(const ConvConfig& c, const Weights& w, int64_t height, int64_t width) {
    auto g = std::make_shared<Geometry>();
    g->height = height;
    g->width = width;
    g->out_h = output_size(c, "height", height, c.pad_top, c.pad_bottom, c.kernel_h, c.stride_h, c.dilation_h);
    g->out_w = output_size(c, "width", width, c.pad_left, c.pad_right, c.kernel_w, c.stride_w, c.dilation_w);
    g->padded_h = height + c.pad_top + c.pad_bottom;
    g->padded_w = width + c.pad_left + c.pad_right;
    const int64_t cw = c.channel_words();

    for (int64_t kh = 0; kh < c.kernel_h; ++kh)
        for (int64_t kw = 0; kw < c.kernel_w; ++kw)
            for (int64_t i = 0; i < cw; ++i)
                g->step_offsets.push_back((kh * c.dilation_h * g->padded_w + kw * c.dilation_w) * cw + i);

    std::vector<std::vector<bool>> row_valid, col_valid;
    const auto row_class = validity_classes(g->out_h, height, c.pad_top, c.kernel_h, c.stride_h, c.dilation_h, row_valid);
    const auto col_class = validity_classes(g->out_w, width, c.pad_left, c.kernel_w, c.stride_w, c.dilation_w, col_valid);
    const int64_t col_classes = static_cast<int64_t>(col_valid.size());
    for (int64_t oh = 0; oh < g->out_h; ++oh) {
        for (int64_t ow = 0; ow < g->out_w; ++ow) {
            g->pixel_offsets.push_back((oh * c.stride_h * g->padded_w + ow * c.stride_w) * cw);
            g->pixel_pattern.push_back(static_cast<int32_t>(row_class[oh] * col_classes + col_class[ow]));
        }
    }

    // D = (valid taps) * C - 2 * (popcount over valid taps)
    //   = (valid taps) * C + 2 * (weight popcount of padded taps) - 2 * (popcount over all taps),
    // because a padded tap reads zero activation words and so counts exactly its weight bits.
    const int64_t patterns = static_cast<int64_t>(row_valid.size()) * col_classes;
    const int64_t m_padded = std::max(w.out_channels_padded, w.out_channels);
    g->pattern_base.assign(patterns * m_padded, 0);
    for (int64_t pattern = 0; pattern < patterns; ++pattern) {
        const auto& rows = row_valid[pattern / col_classes];
        const auto& cols = col_valid[pattern % col_classes];
        for (int64_t m = 0; m < w.out_channels; ++m) {
            int64_t base = 0;
            for (int64_t kh = 0; kh < c.kernel_h; ++kh)
                for (int64_t kw = 0; kw < c.kernel_w; ++kw)
                    base += rows[kh] && cols[kw] ? c.channels : 2 * w.tap_popcount[m * c.taps() + kh * c.kernel_w + kw];
            g->pattern_base[pattern * m_padded + m] = static_cast<int32_t>(base);
        }
    }
    return g;
}

// ------------------------------------------------------------------------------------------
// The kernel object shared by both ops.
// ------------------------------------------------------------------------------------------
struct TensorView {
    const void* data;
    std::vector<int64_t> shape;
};

TensorView input_view(Ort::KernelContext& ctx, size_t index) {
    Ort::ConstValue value = ctx.GetInput(index);
    return {value.GetTensorRawData(), value.GetTensorTypeAndShapeInfo().GetShape()};
}

// Work split for ORT's thread pool: one task packs a run of kPackTaskPixels input pixels of one
// image, one task computes a run of pixel blocks of one image for one output channel block.
constexpr int64_t kPackTaskPixels = 512;  // a multiple of the kernels' 16-pixel packing group

struct ParallelPack {
    const IsaKernels* kernels;
    PackArgs args;
    int64_t tasks_per_image;
    int64_t image_input_stride;  // floats
    int64_t image_packed_words;
    static void run(void* self_ptr, size_t task) {
        const auto* self = static_cast<const ParallelPack*>(self_ptr);
        const int64_t image = static_cast<int64_t>(task) / self->tasks_per_image;
        const int64_t begin = static_cast<int64_t>(task) % self->tasks_per_image * kPackTaskPixels;
        PackArgs args = self->args;
        args.input += image * self->image_input_stride;
        args.packed += image * self->image_packed_words;
        self->kernels->pack_pixels(args, begin, std::min(begin + kPackTaskPixels, args.height * args.width));
    }
};

struct ParallelConv {
    const IsaKernels* kernels;
    ConvArgs args;
    int64_t channel_blocks, pixel_blocks, block_groups, blocks_per_group;
    static void run(void* self_ptr, size_t task) {
        const auto* self = static_cast<const ParallelConv*>(self_ptr);
        const int64_t t = static_cast<int64_t>(task);
        const int64_t channel_block = t % self->channel_blocks;
        const int64_t group = (t / self->channel_blocks) % self->block_groups;
        const int64_t image = t / (self->channel_blocks * self->block_groups);
        const int64_t begin = group * self->blocks_per_group;
        const int64_t end = std::min(begin + self->blocks_per_group, self->pixel_blocks);
        self->kernels->conv_tile(self->args, image, channel_block, begin, end);
    }
};

// Aim for enough tasks to balance a few threads without making each task tiny.
constexpr int64_t kTargetTasksPerImage = 64;

class BinaryConvKernel {
public:
    BinaryConvKernel(const OrtApi& api, const OrtKernelInfo* info, bool linear)
        : linear_(linear),
          config_(check_reduction_size(linear ? read_linear_config(api, info) : read_conv_config(api, info))),
          isa_(choose_isa(config_.op)),
          kernels_(isa_kernels(isa_)) {
        int is_constant = 0;
        const OrtValue* value = nullptr;
        Ort::ThrowOnError(api.KernelInfoGetConstantInput_tensor(info, 1, &is_constant, &value));
        if (is_constant) {
            Ort::ConstValue w(value);
            const auto shape = w.GetTensorTypeAndShapeInfo().GetShape();
            const int64_t out_channels = validate_weight_shape(config_, linear_, shape);
            const auto* words = static_cast<const uint64_t*>(w.GetTensorRawData());
            const int64_t count = w.GetTensorTypeAndShapeInfo().GetElementCount();
            validate_weight_bits(config_, words, count);
            constant_weights_ = std::make_unique<Weights>();
            constant_weights_->original_copy.assign(words, words + count);
            prepare_weights(config_, kernels_, constant_weights_->original_copy.data(), out_channels, *constant_weights_);
        }
    }

    const char* op_name() const { return config_.op; }

    void Compute(OrtKernelContext* context) {
        Ort::KernelContext ctx(context);
        if (ctx.GetInputCount() != 4) fail(config_.op, "expected 4 inputs (X, W, multiplier, bias), got ", ctx.GetInputCount());
        const TensorView x = input_view(ctx, 0);

        // Weights that were not a constant initializer are reordered on every call.
        Weights call_weights;
        const Weights* weights = constant_weights_.get();
        if (weights == nullptr) {
            const TensorView w = input_view(ctx, 1);
            const int64_t out_channels = validate_weight_shape(config_, linear_, w.shape);
            const auto* words = static_cast<const uint64_t*>(w.data);
            validate_weight_bits(config_, words, out_channels * config_.taps() * config_.channel_words());
            prepare_weights(config_, kernels_, words, out_channels, call_weights);
            weights = &call_weights;
        }
        const int64_t m = weights->out_channels;
        const TensorView multiplier = input_view(ctx, 2);
        const TensorView bias = input_view(ctx, 3);
        if (multiplier.shape != std::vector<int64_t>{m})
            fail(config_.op, "multiplier has shape ", shape_string(multiplier.shape), ", expected [", m, "] (one per output channel of W)");
        if (bias.shape != std::vector<int64_t>{m})
            fail(config_.op, "bias has shape ", shape_string(bias.shape), ", expected [", m, "] (one per output channel of W)");

        // Both ops become images of rows x columns of C-channel pixels.
        int64_t images, height, width, channel_stride, pixel_stride;
        std::vector<int64_t> out_shape;
        if (linear_) {
            if (x.shape.size() < 2) fail(config_.op, "X must have rank >= 2, got shape ", shape_string(x.shape));
            if (x.shape.back() != config_.channels)
                fail(config_.op, "X has ", x.shape.back(), " features in its last axis, attribute in_features is ", config_.channels);
            images = 1;
            height = 1;
            width = 1;
            for (size_t i = 0; i + 1 < x.shape.size(); ++i) width *= x.shape[i];
            channel_stride = 1;
            pixel_stride = config_.channels;
            out_shape = x.shape;
            out_shape.back() = m;
        } else {
            if (x.shape.size() != 4) fail(config_.op, "X must have rank 4 [N, C, H, W], got shape ", shape_string(x.shape));
            if (x.shape[1] != config_.channels)
                fail(config_.op, "X has ", x.shape[1], " channels, attribute in_channels is ", config_.channels);
            images = x.shape[0];
            height = x.shape[2];
            width = x.shape[3];
            channel_stride = height * width;
            pixel_stride = 1;
        }
        if (width == 0 && linear_) {  // zero rows: nothing to compute
            ctx.GetOutput(0, out_shape);
            return;
        }
        const std::shared_ptr<const Geometry> geometry = geometry_for(*weights, height, width);
        if (!linear_) out_shape = {images, m, geometry->out_h, geometry->out_w};
        float* y = ctx.GetOutput(0, out_shape).GetTensorMutableData<float>();
        const int64_t pixels = geometry->out_h * geometry->out_w;
        if (images == 0 || pixels == 0) return;
        const auto* x_data = static_cast<const float*>(x.data);
        const auto* mult = static_cast<const float*>(multiplier.data);
        const auto* b = static_cast<const float*>(bias.data);
        const int64_t out_image_stride = linear_ ? 0 : m * pixels;
        const int64_t out_channel_stride = linear_ ? 1 : pixels;
        const int64_t out_pixel_stride = linear_ ? m : 1;
        const int64_t image_stride = config_.channels * height * width;

        if (kernels_ == nullptr) {
            ReferenceConvArgs r{x_data, images, config_.channels, height, width, image_stride, channel_stride, pixel_stride,
                                weights->original, m, config_.kernel_h, config_.kernel_w, config_.stride_h,
                                config_.stride_w, config_.pad_top, config_.pad_left, config_.dilation_h,
                                config_.dilation_w, geometry->out_h, geometry->out_w, mult, b, y,
                                out_image_stride, out_channel_stride, out_pixel_stride};
            reference_binary_conv(r);
            return;
        }

        const int64_t cw = config_.channel_words();
        const int64_t packed_image_words = geometry->padded_h * geometry->padded_w * cw;
        std::vector<uint64_t> packed(static_cast<size_t>(images * packed_image_words), 0);
        const int64_t pack_tasks = (height * width + kPackTaskPixels - 1) / kPackTaskPixels;
        ParallelPack pack{kernels_,
                          PackArgs{x_data, config_.channels, channel_stride, pixel_stride, height, width, packed.data(),
                                   geometry->padded_w, cw, config_.pad_top, config_.pad_left},
                          pack_tasks, image_stride, packed_image_words};
        ctx.ParallelFor(&ParallelPack::run, static_cast<size_t>(images * pack_tasks), 0, &pack);

        // The epilogue transforms whole channel blocks: pad multiplier and bias to M_padded.
        std::vector<float> block_multiplier(weights->out_channels_padded, 0.0f), block_bias(weights->out_channels_padded, 0.0f);
        std::copy(mult, mult + m, block_multiplier.begin());
        std::copy(b, b + m, block_bias.begin());

        const int64_t channel_blocks = weights->out_channels_padded / kernels_->channels_per_block;
        // Tile the Q pixels with blocks of P and P - 1 pixels (e.g. 49 = 4 * 6 + 5 * 5) rather than
        // leave most lanes of a last partial block idle; possible whenever Q >= (P - 1) * blocks.
        const int64_t block_pixels = kernels_->pixels_per_block;
        const int64_t pixel_blocks = (pixels + block_pixels - 1) / block_pixels;
        const int64_t short_blocks = pixel_blocks * block_pixels - pixels;
        const int64_t full_blocks = short_blocks <= pixel_blocks ? pixel_blocks - short_blocks : pixel_blocks;
        const int64_t blocks_per_group =
            std::max<int64_t>(1, pixel_blocks * channel_blocks / kTargetTasksPerImage);
        const int64_t block_groups = (pixel_blocks + blocks_per_group - 1) / blocks_per_group;
        ParallelConv conv{kernels_,
                          ConvArgs{packed.data(), packed_image_words, weights->blocked.data(),
                                   config_.taps() * cw, geometry->step_offsets.data(), geometry->pixel_offsets.data(),
                                   geometry->pixel_pattern.data(), geometry->pattern_base.data(), pixels, full_blocks, m,
                                   weights->out_channels_padded, block_multiplier.data(), block_bias.data(), y, out_image_stride, out_channel_stride,
                                   out_pixel_stride},
                          channel_blocks, pixel_blocks, block_groups, blocks_per_group};
        ctx.ParallelFor(&ParallelConv::run, static_cast<size_t>(images * block_groups * channel_blocks), 0, &conv);
    }

private:
    // The tables depend on the input size and, through the padding correction, on the weights;
    // with constant weights they are cached for the last input size seen.
    std::shared_ptr<const Geometry> geometry_for(const Weights& weights, int64_t height, int64_t width) {
        if (&weights != constant_weights_.get()) return make_geometry(config_, weights, height, width);
        std::lock_guard<std::mutex> lock(geometry_mutex_);
        if (!cached_geometry_ || cached_geometry_->height != height || cached_geometry_->width != width)
            cached_geometry_ = make_geometry(config_, weights, height, width);
        return cached_geometry_;
    }

    const bool linear_;
    const ConvConfig config_;
    const Isa isa_;
    const IsaKernels* const kernels_;  // nullptr for the reference path
    std::unique_ptr<Weights> constant_weights_;
    std::mutex geometry_mutex_;
    std::shared_ptr<const Geometry> cached_geometry_;
};

// ------------------------------------------------------------------------------------------
// ORT registration. The V2 entry points return statuses: every exception is caught here and
// never unwinds through ONNX Runtime.
// ------------------------------------------------------------------------------------------
OrtStatus* to_status(const char* op, const std::exception_ptr& error) {
    const OrtApi& api = Ort::GetApi();
    try {
        std::rethrow_exception(error);
    } catch (const Ort::Exception& e) {
        return api.CreateStatus(e.GetOrtErrorCode(), e.what());
    } catch (const std::exception& e) {
        return api.CreateStatus(ORT_FAIL, (std::string(op) + ": " + e.what()).c_str());
    } catch (...) {
        return api.CreateStatus(ORT_FAIL, (std::string(op) + ": unknown error").c_str());
    }
}

struct BinaryConvKernelEntry : BinaryConvKernel {
    using BinaryConvKernel::BinaryConvKernel;
    OrtStatusPtr ComputeV2(OrtKernelContext* context) {
        try {
            Compute(context);
            return nullptr;
        } catch (...) {
            return to_status(op_name(), std::current_exception());
        }
    }
};

template <bool kLinear>
struct BinaryOp : Ort::CustomOpBase<BinaryOp<kLinear>, BinaryConvKernelEntry, /*WithStatus=*/true> {
    static constexpr const char* kName = kLinear ? "BinaryLinear" : "BinaryConv2d";

    BinaryOp() { this->end_ver_ = kOpsetVersion; }  // start_ver_ defaults to 1 = kOpsetVersion

    OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
        try {
            *kernel = new BinaryConvKernelEntry(api, info, kLinear);
            return nullptr;
        } catch (...) {
            return to_status(kName, std::current_exception());
        }
    }
    const char* GetName() const { return kName; }
    size_t GetInputTypeCount() const { return 4; }
    ONNXTensorElementDataType GetInputType(size_t index) const {
        return index == 1 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    }
    size_t GetOutputTypeCount() const { return 1; }
    ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

const BinaryOp<false> binary_conv_op;
const BinaryOp<true> binary_linear_op;

std::string available_isa_list() {
    std::string list;
    for (Isa isa : {Isa::avx512, Isa::avx2, Isa::neon, Isa::scalar, Isa::reference})
        if (cpu_supports(isa)) list += std::string(list.empty() ? "" : ",") + isa_name(isa);
    return list;
}

}  // namespace
}  // namespace binarize

extern "C" {

// Entry point called by SessionOptions.register_custom_ops_library. The domain object has to
// outlive every session that uses it, so registered domains are kept for the process lifetime.
BINARIZE_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
    const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
    if (api == nullptr)  // older runtime: version 1 of the API always exists and can report it
        return api_base->GetApi(1)->CreateStatus(
            ORT_FAIL, "libbinarize_ort needs ONNX Runtime C API version " ORT_API_VERSION_STRING " (onnxruntime >= 1.21)");
    Ort::InitApi(api);
    static std::mutex domains_mutex;
    static std::vector<std::unique_ptr<Ort::CustomOpDomain>> domains;
    try {
        auto domain = std::make_unique<Ort::CustomOpDomain>(binarize::kDomain);
        domain->Add(&binarize::binary_conv_op);
        domain->Add(&binarize::binary_linear_op);
        Ort::UnownedSessionOptions(options).Add(*domain);
        std::lock_guard<std::mutex> lock(domains_mutex);
        domains.push_back(std::move(domain));
        return nullptr;
    } catch (const Ort::Exception& e) {
        return api->CreateStatus(e.GetOrtErrorCode(), e.what());
    } catch (const std::exception& e) {
        return api->CreateStatus(ORT_FAIL, e.what());
    }
}

// Comma-separated instruction set paths this CPU can run, fastest first (read by binarize.kernels).
BINARIZE_EXPORT const char* binarize_available_isas() {
    static const std::string list = binarize::available_isa_list();
    return list.c_str();
}

}  // extern "C"
