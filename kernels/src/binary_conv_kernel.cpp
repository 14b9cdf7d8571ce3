#include "binary_conv_kernel.h"

#include <algorithm>

#include "errors.h"
#include "reference_kernels.h"

namespace binarize {
namespace {

// The W input must be [M, KH, KW, CW] (conv) or [M, CW] (linear) with zero unused high bits.
int64_t validate_weight_shape(const ConvConfig& config, const std::vector<int64_t>& shape) {
    const std::vector<int64_t> tail = config.linear ? std::vector<int64_t>{config.channel_words()}
                                                    : std::vector<int64_t>{config.kernel_h, config.kernel_w, config.channel_words()};
    if (shape.size() != tail.size() + 1 || !std::equal(tail.begin(), tail.end(), shape.begin() + 1) || shape[0] <= 0) {
        std::vector<int64_t> expected{-1};
        expected.insert(expected.end(), tail.begin(), tail.end());
        fail(config.op, "packed weight W has shape ", shape_string(shape), ", expected [M",
             shape_string(expected).substr(3), " (", config.channels, " input channels packed into ",
             config.channel_words(), " 64-bit words per ", config.linear ? "row" : "kernel tap", ")");
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
    const int64_t bytes = weights.out_channels_padded * taps * cw * kernels->weight_step_bytes;
    weights.blocked.assign((bytes + 7) / 8, 0);
    kernels->block_weights(words, out_channels, taps * cw, weights.blocked.data());
}

struct TensorView {
    const void* data;
    std::vector<int64_t> shape;
};

TensorView input_view(Ort::KernelContext& ctx, size_t index) {
    Ort::ConstValue value = ctx.GetInput(index);
    return {value.GetTensorRawData(), value.GetTensorTypeAndShapeInfo().GetShape()};
}

// Version 2's optional float inputs: nullptr when the node leaves `index` out (or has fewer
// inputs), else the data after checking element type and shape: exactly `expected`, or, with
// `channels` (BinaryConv2d v4's residual), `expected` with another count at axis 1 that divides
// expected[1] or that expected[1] divides, written to *channels.
const float* optional_float_input(Ort::KernelContext& ctx, size_t index, const char* op, const char* name,
                                  const std::vector<int64_t>& expected, const char* meaning,
                                  int64_t* channels = nullptr) {
    if (index >= ctx.GetInputCount()) return nullptr;
    Ort::ConstValue value = ctx.GetInput(index);
    if (static_cast<const OrtValue*>(value) == nullptr) return nullptr;
    if (!value.IsTensor()) fail(op, name, " must be a float32 tensor");
    const auto info = value.GetTensorTypeAndShapeInfo();
    if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
        fail(op, name, " must be float32, got ONNX element type ", static_cast<int>(info.GetElementType()));
    const std::vector<int64_t> shape = info.GetShape();
    if (channels != nullptr && shape.size() == 4 && expected.size() == 4 && shape[1] > 0 && expected[1] > 0 &&
        shape[0] == expected[0] && shape[2] == expected[2] && shape[3] == expected[3]) {
        if (expected[1] % shape[1] != 0 && shape[1] % expected[1] != 0)
            fail(op, name, " has ", shape[1], " channels and Y has ", expected[1],
                 ": one count must divide the other (tiled or averaged in groups, version 4)");
        *channels = shape[1];
    } else if (shape != expected) {
        fail(op, name, " has shape ", shape_string(shape), ", expected ", shape_string(expected), " (", meaning, ")");
    } else if (channels != nullptr) {
        *channels = expected[1];
    }
    return static_cast<const float*>(value.GetTensorRawData());
}

// BinaryConv2d v4's residual of `channels` channels written out with Y's M channels, [N][M][pixels],
// one output channel per task (ORT's thread pool): channel m is channel m % channels (tiled), or,
// where M divides `channels`, the float32 sum of the relu?(r) of channels m*g .. m*g + g - 1 in
// that order, divided by g (the ReLU then applied: the caller clears its flag).
struct ParallelResidualMap {
    const float* residual;
    int64_t channels;
    bool relu;
    int64_t m, pixels;
    float* out;
    static void run(void* self_ptr, size_t task) {
        const auto* self = static_cast<const ParallelResidualMap*>(self_ptr);
        const int64_t n = static_cast<int64_t>(task) / self->m, c = static_cast<int64_t>(task) % self->m;
        const int64_t pixels = self->pixels;
        float* dst = self->out + static_cast<int64_t>(task) * pixels;
        if (self->channels <= self->m) {
            std::copy_n(self->residual + (n * self->channels + c % self->channels) * pixels, pixels, dst);
            return;
        }
        const int64_t group = self->channels / self->m;
        const float* src = self->residual + (n * self->channels + c * group) * pixels;
        const bool relu = self->relu;
        for (int64_t p = 0; p < pixels; ++p) dst[p] = relu && src[p] < 0.0f ? 0.0f : src[p];
        for (int64_t i = 1; i < group; ++i)
            for (int64_t p = 0; p < pixels; ++p) {
                const float r = src[i * pixels + p];
                dst[p] += relu && r < 0.0f ? 0.0f : r;
            }
        for (int64_t p = 0; p < pixels; ++p) dst[p] /= static_cast<float>(group);
    }
};

// Work split for ORT's thread pool: one task packs a run of kPackTaskPixels input pixels of one
// image, one task computes a run of pixel blocks of one image for one output channel block.
constexpr int64_t kPackTaskPixels = 512;  // a multiple of the kernels' 16-pixel packing group
// An image is packed and convolved in bands of output pixels whose packed input takes about this
// much (half of a 512 KiB L2 cache): each band's input is packed just before the band is computed,
// so the convolution reads it from the cache the packing wrote it to, where packing the whole
// image first evicted it (8 bytes per 64 input channels and pixel: one band up to a 180 x 180
// image of 64 channels, 90 x 90 of 256).
constexpr int64_t kBandBytes = 256 * 1024;

struct ParallelPack {
    const IsaKernels* kernels;
    PackArgs args;         // of one image
    int64_t begin, end;    // its input pixels to pack
    static void run(void* self_ptr, size_t task) {
        const auto* self = static_cast<const ParallelPack*>(self_ptr);
        const int64_t begin = self->begin + static_cast<int64_t>(task) * kPackTaskPixels;
        self->kernels->pack_pixels(self->args, begin, std::min(begin + kPackTaskPixels, self->end));
    }
};

struct ParallelConv {
    const IsaKernels* kernels;
    ConvArgs args;
    int64_t image, channel_blocks, pixel_blocks, first_group, blocks_per_group;
    static void run(void* self_ptr, size_t task) {
        const auto* self = static_cast<const ParallelConv*>(self_ptr);
        const int64_t t = static_cast<int64_t>(task);
        const int64_t channel_block = t % self->channel_blocks;
        const int64_t begin = (self->first_group + t / self->channel_blocks) * self->blocks_per_group;
        const int64_t end = std::min(begin + self->blocks_per_group, self->pixel_blocks);
        self->kernels->conv_tile(self->args, self->image, channel_block, begin, end);
    }
};

// The largest packed activation buffer a call allocates (1 GiB), see Compute.
constexpr int64_t kMaxPackedWords = int64_t{1} << 27;
// The largest buffer kept for the calling thread's later calls (64 MiB).
constexpr int64_t kReusedBufferBytes = int64_t{1} << 26;

// `count` elements for one call (the packed activations, v4's residual written out): the calling
// thread's buffer of T, reused from call to call up to kReusedBufferBytes (tasks on other threads
// write into it), else `call_buffer`. A new buffer per call is fresh memory from the system when
// it is large (glibc maps every block over 128 KiB anew), and this VM's page faults made a fresh
// 162 KB buffer per call cost 1.7x a 512@7 layer's convolution time (benchmarks/RESULTS.md, "AVX2
// counting by activation count tables").
template <typename T>
T* call_buffer_of(int64_t count, std::vector<T>& call_buffer) {
    thread_local std::vector<T> reused;
    std::vector<T>& buffer = count <= kReusedBufferBytes / static_cast<int64_t>(sizeof(T)) ? reused : call_buffer;
    if (static_cast<int64_t>(buffer.size()) < count) buffer.resize(static_cast<size_t>(count));
    return buffer.data();
}

// Zeroes the padding pixels of one packed image (the packing writes every other word).
void zero_padding(uint64_t* image, const ConvShape& shape, int64_t height, int64_t width, int64_t pad_top, int64_t pad_left) {
    const int64_t row_words = shape.padded_w * shape.pixel_words;
    for (int64_t row = 0; row < shape.padded_h; ++row) {
        uint64_t* r = image + row * row_words;
        if (row < pad_top || row >= pad_top + height) {
            std::fill(r, r + row_words, 0);
        } else {
            std::fill(r, r + pad_left * shape.pixel_words, 0);
            std::fill(r + (pad_left + width) * shape.pixel_words, r + row_words, 0);
        }
    }
}

// Aim for enough tasks to balance a few threads without making each task tiny.
constexpr int64_t kTargetTasksPerImage = 64;

}  // namespace

BinaryConvKernel::BinaryConvKernel(const OrtApi& api, const OrtKernelInfo* info, bool linear, Isa isa)
    : config_(linear ? read_linear_config(api, info) : read_conv_config(api, info)),
      isa_(isa),
      kernels_(isa_kernels(isa_)) {
    int is_constant = 0;
    const OrtValue* value = nullptr;
    Ort::ThrowOnError(api.KernelInfoGetConstantInput_tensor(info, 1, &is_constant, &value));
    if (is_constant) {
        Ort::ConstValue w(value);
        const auto shape = w.GetTensorTypeAndShapeInfo().GetShape();
        const int64_t out_channels = validate_weight_shape(config_, shape);
        const auto* words = static_cast<const uint64_t*>(w.GetTensorRawData());
        const int64_t count = w.GetTensorTypeAndShapeInfo().GetElementCount();
        validate_weight_bits(config_, words, count);
        constant_weights_ = std::make_unique<Weights>();
        constant_weights_->original_copy.assign(words, words + count);
        prepare_weights(config_, kernels_, constant_weights_->original_copy.data(), out_channels, *constant_weights_);
    }
}

void BinaryConvKernel::Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    // Version 1 nodes have 4 inputs, version 2 nodes up to 6 (threshold, residual), version 3 up
    // to 7 (residual2); a kernel cannot see the node's version (binarize.runtime.session refuses
    // a node with inputs or attributes its version does not have).
    const size_t inputs = ctx.GetInputCount();
    if (inputs < 4 || inputs > 7)
        fail(config_.op, "expected 4 inputs (X, W, multiplier, bias) or, in version 2, up to 6 (+ threshold, residual), "
             "in version 3 up to 7 (+ residual2), got ", inputs);
    const TensorView x = input_view(ctx, 0);

    // Weights that were not a constant initializer are reordered on every call.
    Weights call_weights;
    const Weights* weights = constant_weights_.get();
    if (weights == nullptr) {
        const TensorView w = input_view(ctx, 1);
        const int64_t out_channels = validate_weight_shape(config_, w.shape);
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
    if (config_.linear) {
        if (x.shape.size() < 2) fail(config_.op, "X must have rank >= 2, got shape ", shape_string(x.shape));
        if (x.shape.back() != config_.channels)
            fail(config_.op, "X has ", x.shape.back(), " features in its last axis, attribute in_features is ", config_.channels);
        images = 1;
        height = 1;
        width = 1;
        for (size_t i = 0; i + 1 < x.shape.size(); ++i) width = checked_mul(config_.op, "rows of X", width, x.shape[i]);
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
    const float* threshold = optional_float_input(ctx, 4, config_.op, "threshold", {config_.channels},
                                                  config_.linear ? "one per input feature, attribute in_features"
                                                                 : "one per input channel, attribute in_channels");
    if (width == 0 && config_.linear) {  // zero rows: nothing to compute
        optional_float_input(ctx, 5, config_.op, "residual", out_shape, "exactly the shape of Y");
        optional_float_input(ctx, 6, config_.op, "residual2", out_shape, "exactly the shape of Y");
        ctx.GetOutput(0, out_shape);
        return;
    }
    // Checked on every path, before any table or buffer is built.
    const ConvShape shape = conv_shape(config_, height, width);
    if (!config_.linear) out_shape = {images, m, shape.out_h, shape.out_w};
    int64_t residual_channels = m;  // v4: a conv's residual may have another channel count
    Residuals residuals{
        {optional_float_input(ctx, 5, config_.op, "residual", out_shape,
                              config_.linear ? "exactly the shape of Y" : "Y's shape, or another channel count in version 4",
                              config_.linear ? nullptr : &residual_channels),
         optional_float_input(ctx, 6, config_.op, "residual2", out_shape, "exactly the shape of Y")},
        {config_.residual_relu[0], config_.residual_relu[1]},
        {0, 0},
        config_.activation};
    float* y = ctx.GetOutput(0, out_shape).GetTensorMutableData<float>();
    const int64_t pixels = shape.out_h * shape.out_w;
    if (images == 0 || pixels == 0) return;  // an empty output needs no geometry tables
    const auto* x_data = static_cast<const float*>(x.data);
    const auto* mult = static_cast<const float*>(multiplier.data);
    const auto* b = static_cast<const float*>(bias.data);
    const int64_t out_image_stride = config_.linear ? 0 : m * pixels;
    const int64_t out_channel_stride = config_.linear ? 1 : pixels;
    const int64_t out_pixel_stride = config_.linear ? m : 1;
    const int64_t image_stride = config_.channels * height * width;

    // The packed activations of all images; beyond kMaxPackedWords, a rare shape (a huge padding
    // or batch), the call runs on the reference path, which needs no packed buffer, instead of
    // allocating it.
    int64_t packed_words = 0;
    const bool packed_too_large = kernels_ != nullptr &&
        (__builtin_mul_overflow(images, shape.packed_image_words, &packed_words) || packed_words > kMaxPackedWords);
    // A residual of another channel count (v4): a tiled one whose period is whole channel blocks is
    // read in place by the kernels; the others (group means, the reference path) are written out
    // like Y first, in a pass that still reads the shortcut's input once and needs no ONNX node.
    std::vector<float> call_residual;
    if (residual_channels != m) {
        if (kernels_ != nullptr && !packed_too_large && residual_channels < m &&
            residual_channels % kernels_->channels_per_block == 0) {
            residuals.period[0] = residual_channels;
        } else {
            float* mapped = call_buffer_of(images * m * pixels, call_residual);
            ParallelResidualMap map{residuals.tensor[0], residual_channels, residuals.relu[0], m, pixels, mapped};
            ctx.ParallelFor(&ParallelResidualMap::run, static_cast<size_t>(images * m), 0, &map);
            residuals.tensor[0] = mapped;
            if (residual_channels > m) residuals.relu[0] = false;  // applied before the mean
        }
    }
    if (kernels_ == nullptr || packed_too_large) {
        ReferenceConvArgs r{x_data, images, config_.channels, height, width, image_stride, channel_stride, pixel_stride,
                            weights->original, m, config_.kernel_h, config_.kernel_w, config_.stride_h,
                            config_.stride_w, config_.pad_top, config_.pad_left, config_.dilation_h,
                            config_.dilation_w, shape.out_h, shape.out_w, mult, b, y,
                            out_image_stride, out_channel_stride, out_pixel_stride, threshold, residuals};
        reference_binary_conv(r);
        return;
    }

    const std::shared_ptr<const Geometry> geometry = geometry_for(*weights, shape);
    const int64_t cw = config_.channel_words();
    const int64_t packed_image_words = shape.packed_image_words;
    std::vector<uint64_t> call_buffer;
    uint64_t* const packed = call_buffer_of(packed_words, call_buffer);
    for (int64_t image = 0; image < images; ++image)
        zero_padding(packed + image * packed_image_words, shape, height, width, config_.pad_top, config_.pad_left);

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
    const int64_t blocks_per_group = std::max<int64_t>(1, pixel_blocks * channel_blocks / kTargetTasksPerImage);
    const int64_t block_groups = (pixel_blocks + blocks_per_group - 1) / blocks_per_group;
    const ConvArgs conv_args{packed, packed_image_words, weights->blocked.data(),
                             config_.taps() * cw, geometry->step_offsets.data(), geometry->pixel_offsets.data(),
                             geometry->pixel_pattern.data(), geometry->pattern_base.data(), pixels, full_blocks, m,
                             weights->out_channels_padded, block_multiplier.data(), block_bias.data(), y,
                             out_image_stride, out_channel_stride, out_pixel_stride, residuals};

    // Bands of block groups: about kBandBytes of packed input rows each (BinaryLinear: of rows of X).
    const int64_t input_row_bytes = (config_.linear ? 1 : width) * shape.pixel_words * 8;
    const int64_t band_pixels = std::max<int64_t>(1, kBandBytes / input_row_bytes / config_.stride_h) * (config_.linear ? 1 : shape.out_w);
    const int64_t band_groups = std::max<int64_t>(1, band_pixels / block_pixels / blocks_per_group);
    // The input pixels (row-major) that output pixels [0, q_end) read.
    auto input_pixels_for = [&](int64_t q_end) -> int64_t {
        if (config_.linear) return q_end;
        const int64_t last_row = (q_end - 1) / shape.out_w * config_.stride_h + (config_.kernel_h - 1) * config_.dilation_h - config_.pad_top;
        return std::clamp<int64_t>(last_row + 1, 0, height) * width;
    };
    for (int64_t image = 0; image < images; ++image) {
        const PackArgs pack_args{x_data + image * image_stride, config_.channels, channel_stride, pixel_stride, height, width,
                                 packed + image * packed_image_words, shape.padded_w, cw, config_.pad_top, config_.pad_left,
                                 threshold};
        int64_t packed_pixels = 0;
        for (int64_t g0 = 0; g0 < block_groups; g0 += band_groups) {
            const int64_t g1 = std::min(block_groups, g0 + band_groups);
            const int64_t block_end = std::min(pixel_blocks, g1 * blocks_per_group);
            const int64_t q_end = std::min(pixels, block_end <= full_blocks ? block_end * block_pixels
                                                   : full_blocks * block_pixels + (block_end - full_blocks) * (block_pixels - 1));
            const int64_t needed = input_pixels_for(q_end);
            if (needed > packed_pixels) {
                ParallelPack pack{kernels_, pack_args, packed_pixels, needed};
                ctx.ParallelFor(&ParallelPack::run, static_cast<size_t>((needed - packed_pixels + kPackTaskPixels - 1) / kPackTaskPixels), 0, &pack);
                packed_pixels = needed;
            }
            ParallelConv conv{kernels_, conv_args, image, channel_blocks, pixel_blocks, g0, blocks_per_group};
            ctx.ParallelFor(&ParallelConv::run, static_cast<size_t>((g1 - g0) * channel_blocks), 0, &conv);
        }
    }
}

// The tables depend on the input size and, through the padding correction, on the weights;
// with constant weights they are cached for the last input size seen.
std::shared_ptr<const Geometry> BinaryConvKernel::geometry_for(const Weights& weights, const ConvShape& shape) {
    auto build = [&] {
        return make_geometry(config_, shape, weights.tap_popcount, weights.out_channels, weights.out_channels_padded);
    };
    if (&weights != constant_weights_.get()) return build();
    std::lock_guard<std::mutex> lock(geometry_mutex_);
    if (!cached_geometry_ || cached_geometry_->shape.height != shape.height || cached_geometry_->shape.width != shape.width)
        cached_geometry_ = build();
    return cached_geometry_;
}

}  // namespace binarize
