// Attributes of BinaryConv2d / BinaryLinear, read and validated against the generated
// definitions (op_definitions.h, from binarize/opset.py) when a kernel is created.
#pragma once

#include <cstdint>

#include "ort_api.h"

namespace binarize {

// Convolution geometry shared by both ops; BinaryLinear is a 1x1 convolution over the rows of X.
struct ConvConfig {
    const char* op;
    bool linear;
    int64_t channels;  // C (in_channels / in_features)
    int64_t kernel_h = 1, kernel_w = 1;
    int64_t stride_h = 1, stride_w = 1;
    int64_t pad_top = 0, pad_left = 0, pad_bottom = 0, pad_right = 0;
    int64_t dilation_h = 1, dilation_w = 1;
    bool residual_relu[2] = {false, false};  // v3: a ReLU on residual / residual2 before it is added
    int activation = 0;  // BinaryConv2d v4: 0 none, 1 ReLU, 2 ReLU6, 3 HardSwish, applied to Y last

    int64_t channel_words() const { return (channels + 63) / 64; }
    int64_t taps() const { return kernel_h * kernel_w; }
};

// The validated attributes of the node `info` describes: every attribute of the op with its
// declared type, length and limits (defaults filled in), no attribute of another binarize op,
// and KH * KW * C within kMaxReduction. Throws (via fail) naming the op otherwise.
ConvConfig read_conv_config(const OrtApi& api, const OrtKernelInfo* info);
ConvConfig read_linear_config(const OrtApi& api, const OrtKernelInfo* info);

}  // namespace binarize
