// Convolution geometry: the output and padded-buffer sizes for one input size, computed with
// overflow-checked arithmetic against the limits of op_definitions.h (the same checks for every
// kernel path, the reference one included), and the per-input-size tables of the hot loop
// (layout comment in isa_kernels.cpp).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "attributes.h"

namespace binarize {

// a * b and a + b for non-negative sizes, or an error naming the op and the quantity.
int64_t checked_mul(const char* op, const char* what, int64_t a, int64_t b);
int64_t checked_add(const char* op, const char* what, int64_t a, int64_t b);

struct ConvShape {
    int64_t height = -1, width = -1;  // the input size this is for
    int64_t out_h = 0, out_w = 0;
    int64_t padded_h = 0, padded_w = 0;
    int64_t pixel_words = 0;          // ceil(C/64): the packed words of one pixel
    int64_t packed_image_words = 0;   // padded_h * padded_w * pixel_words
};

// Throws when the input is smaller than the dilated kernel or a size exceeds its limit.
ConvShape conv_shape(const ConvConfig& config, int64_t height, int64_t width);

struct Geometry {
    ConvShape shape;
    std::vector<int64_t> step_offsets;   // [K]
    std::vector<int64_t> pixel_offsets;  // [Q]
    std::vector<int32_t> pixel_pattern;  // [Q]
    std::vector<int32_t> pattern_base;   // [patterns][M_padded] (|base| <= KH*KW*C < 2^31)
};

// The tables for `shape`; tap_popcount is [M][KH*KW], the popcount of each weight tap's words
// (the padding correction depends on the weights).
std::shared_ptr<const Geometry> make_geometry(const ConvConfig& config, const ConvShape& shape,
                                              const std::vector<int64_t>& tap_popcount, int64_t out_channels,
                                              int64_t out_channels_padded);

}  // namespace binarize
