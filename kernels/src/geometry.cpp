#include "geometry.h"

#include <algorithm>
#include <map>
#include <utility>

#include "errors.h"
#include "op_definitions.h"

namespace binarize {

int64_t checked_mul(const char* op, const char* what, int64_t a, int64_t b) {
    int64_t result = 0;
    if (__builtin_mul_overflow(a, b, &result)) fail(op, what, " = ", a, " * ", b, " overflows 64-bit integers");
    return result;
}

int64_t checked_add(const char* op, const char* what, int64_t a, int64_t b) {
    int64_t result = 0;
    if (__builtin_add_overflow(a, b, &result)) fail(op, what, " = ", a, " + ", b, " overflows 64-bit integers");
    return result;
}

namespace {

// Output length along one axis; the attributes are at most kMaxSpatial, the input size any int64.
int64_t output_size(const ConvConfig& c, const char* axis, int64_t in, int64_t pad_begin, int64_t pad_end,
                    int64_t kernel, int64_t stride, int64_t dilation, int64_t& padded) {
    padded = checked_add(c.op, "padded input size", checked_add(c.op, "padded input size", in, pad_begin), pad_end);
    const int64_t span = checked_add(c.op, "dilated kernel size", checked_mul(c.op, "dilated kernel size", dilation, kernel - 1), 1);
    if (padded < span)
        fail(c.op, "input ", axis, " ", in, " with pads ", pad_begin, "+", pad_end, " is smaller than the dilated kernel (",
             span, ")");
    return (padded - span) / stride + 1;
}

// The kernel taps [first, last) of output position o that land inside the input (they are
// contiguous, because the input index grows with the tap index).
std::pair<int64_t, int64_t> valid_taps(int64_t o, int64_t in, int64_t pad, int64_t kernel, int64_t stride, int64_t dilation) {
    const int64_t origin = o * stride - pad;  // input index of tap 0, |origin| <= padded size
    const int64_t first = origin >= 0 ? 0 : std::min(kernel, (-origin + dilation - 1) / dilation);
    const int64_t last = origin >= in ? 0 : std::min(kernel, (in - 1 - origin) / dilation + 1);
    return {first, std::max(first, last)};
}

// Output rows (columns) with the same valid tap range share a class; a pixel's padding
// pattern is the pair (row class, column class).
std::vector<int32_t> validity_classes(int64_t out, int64_t in, int64_t pad, int64_t kernel, int64_t stride,
                                      int64_t dilation, std::vector<std::pair<int64_t, int64_t>>& class_taps) {
    std::map<std::pair<int64_t, int64_t>, int32_t> ids;
    std::vector<int32_t> class_of(out);
    for (int64_t o = 0; o < out; ++o) {
        const auto taps = valid_taps(o, in, pad, kernel, stride, dilation);
        auto [it, inserted] = ids.emplace(taps, static_cast<int32_t>(class_taps.size()));
        if (inserted) class_taps.push_back(taps);
        class_of[o] = it->second;
    }
    return class_of;
}

}  // namespace

ConvShape conv_shape(const ConvConfig& c, int64_t height, int64_t width) {
    ConvShape s;
    s.height = height;
    s.width = width;
    s.out_h = output_size(c, "height", height, c.pad_top, c.pad_bottom, c.kernel_h, c.stride_h, c.dilation_h, s.padded_h);
    s.out_w = output_size(c, "width", width, c.pad_left, c.pad_right, c.kernel_w, c.stride_w, c.dilation_w, s.padded_w);
    const int64_t padded_pixels = checked_mul(c.op, "padded input pixels", s.padded_h, s.padded_w);
    const int64_t image_words = checked_mul(c.op, "packed input words per image", padded_pixels, c.channel_words());
    // BinaryLinear's "image" is its rows, as large as X itself; a convolution's padding is not.
    if (!c.linear && image_words > kMaxPaddedImageWords)
        fail(c.op, "the zero-padded input image ", s.padded_h, " x ", s.padded_w, " pixels x ", c.channel_words(),
             " words = ", image_words, " packed words exceeds the limit of ", kMaxPaddedImageWords,
             " (input ", height, " x ", width, ", pads [", c.pad_top, ", ", c.pad_left, ", ", c.pad_bottom, ", ",
             c.pad_right, "])");
    s.pixel_words = c.channel_words();
    s.packed_image_words = image_words;
    return s;
}

// Every table index below is bounded by padded_h * padded_w * pixel_words <= kMaxPaddedImageWords
// (or by the size of X for BinaryLinear), so the offsets cannot overflow.
std::shared_ptr<const Geometry> make_geometry(const ConvConfig& c, const ConvShape& shape,
                                              const std::vector<int64_t>& tap_popcount, int64_t out_channels,
                                              int64_t out_channels_padded) {
    auto g = std::make_shared<Geometry>();
    g->shape = shape;
    const int64_t words = shape.pixel_words;  // packed words per pixel

    g->step_offsets.reserve(c.taps() * words);
    for (int64_t kh = 0; kh < c.kernel_h; ++kh)
        for (int64_t kw = 0; kw < c.kernel_w; ++kw)
            for (int64_t i = 0; i < words; ++i)
                g->step_offsets.push_back((kh * c.dilation_h * shape.padded_w + kw * c.dilation_w) * words + i);

    std::vector<std::pair<int64_t, int64_t>> row_taps, col_taps;
    const auto row_class = validity_classes(shape.out_h, shape.height, c.pad_top, c.kernel_h, c.stride_h, c.dilation_h, row_taps);
    const auto col_class = validity_classes(shape.out_w, shape.width, c.pad_left, c.kernel_w, c.stride_w, c.dilation_w, col_taps);
    const int64_t col_classes = static_cast<int64_t>(col_taps.size());
    g->pixel_offsets.reserve(shape.out_h * shape.out_w);
    g->pixel_pattern.reserve(shape.out_h * shape.out_w);
    for (int64_t oh = 0; oh < shape.out_h; ++oh) {
        for (int64_t ow = 0; ow < shape.out_w; ++ow) {
            g->pixel_offsets.push_back((oh * c.stride_h * shape.padded_w + ow * c.stride_w) * words);
            g->pixel_pattern.push_back(static_cast<int32_t>(row_class[oh] * col_classes + col_class[ow]));
        }
    }

    // D = (valid taps) * C - 2 * (popcount over valid taps)
    //   = (valid taps) * C + 2 * (weight popcount of padded taps) - 2 * (popcount over all taps),
    // because a padded tap reads zero activation words and so counts exactly its weight bits.
    // The valid taps of a pattern are a rectangle of the kernel: summed from a prefix-sum table
    // of the tap popcounts, so the cost does not grow with the kernel area per pattern.
    const int64_t kh_n = c.kernel_h, kw_n = c.kernel_w;
    const int64_t patterns = static_cast<int64_t>(row_taps.size()) * col_classes;
    const int64_t m_padded = std::max(out_channels_padded, out_channels);
    g->pattern_base.assign(patterns * m_padded, 0);
    std::vector<int64_t> prefix((kh_n + 1) * (kw_n + 1));  // prefix[(i * (KW+1)) + j] = sum over taps < (i, j)
    for (int64_t m = 0; m < out_channels; ++m) {
        for (int64_t i = 0; i < kh_n; ++i)
            for (int64_t j = 0; j < kw_n; ++j)
                prefix[(i + 1) * (kw_n + 1) + j + 1] = tap_popcount[m * c.taps() + i * kw_n + j] + prefix[i * (kw_n + 1) + j + 1] +
                                                       prefix[(i + 1) * (kw_n + 1) + j] - prefix[i * (kw_n + 1) + j];
        const int64_t total = prefix[kh_n * (kw_n + 1) + kw_n];
        for (int64_t pattern = 0; pattern < patterns; ++pattern) {
            const auto [r0, r1] = row_taps[pattern / col_classes];
            const auto [c0, c1] = col_taps[pattern % col_classes];
            const int64_t valid_popcount = prefix[r1 * (kw_n + 1) + c1] - prefix[r0 * (kw_n + 1) + c1] -
                                           prefix[r1 * (kw_n + 1) + c0] + prefix[r0 * (kw_n + 1) + c0];
            const int64_t base = (r1 - r0) * (c1 - c0) * c.channels + 2 * (total - valid_popcount);
            g->pattern_base[pattern * m_padded + m] = static_cast<int32_t>(base);
        }
    }
    return g;
}

}  // namespace binarize
