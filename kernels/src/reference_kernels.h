// Reference binary convolution: the specification written as loops (kernels/SPEC.md), with no
// packing tricks, used as the `reference` ISA and as the oracle the fast paths are tested against.
#pragma once

#include <cstdint>

#include "kernel_api.h"

namespace binarize {

struct ReferenceConvArgs {
    const float* input;  // image n, channel c, pixel (h, w) at
                         // input[n*image_stride + c*channel_stride + (h*width + w)*pixel_stride]
    int64_t images, channels, height, width;
    int64_t image_stride, channel_stride, pixel_stride;
    const uint64_t* weights;  // [M][KH][KW][ceil(C/64)] as in the ONNX W input
    int64_t out_channels, kernel_h, kernel_w;
    int64_t stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w;
    int64_t out_h, out_w;
    const float* multiplier;
    const float* bias;
    float* output;  // output[n*output_image_stride + m*output_channel_stride + (oh*out_w + ow)*output_pixel_stride]
    int64_t output_image_stride, output_channel_stride, output_pixel_stride;
    const float* threshold;  // [C] or nullptr (version 2): the sign of x - threshold[c]
    Residuals residuals;     // added to the result (versions 2 and 3, kernel_api.h)
};

void reference_binary_conv(const ReferenceConvArgs& args);

}  // namespace binarize
