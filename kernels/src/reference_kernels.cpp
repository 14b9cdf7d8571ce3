#include "reference_kernels.h"

namespace binarize {

void reference_binary_conv(const ReferenceConvArgs& a) {
    const int64_t channel_words = (a.channels + 63) / 64;
    for (int64_t n = 0; n < a.images; ++n) {
        for (int64_t m = 0; m < a.out_channels; ++m) {
            for (int64_t oh = 0; oh < a.out_h; ++oh) {
                for (int64_t ow = 0; ow < a.out_w; ++ow) {
                    int64_t d = 0;
                    for (int64_t kh = 0; kh < a.kernel_h; ++kh) {
                        for (int64_t kw = 0; kw < a.kernel_w; ++kw) {
                            const int64_t ih = oh * a.stride_h - a.pad_top + kh * a.dilation_h;
                            const int64_t iw = ow * a.stride_w - a.pad_left + kw * a.dilation_w;
                            // Zero padding of the binarized input: taps outside the image add nothing.
                            if (ih < 0 || ih >= a.height || iw < 0 || iw >= a.width) continue;
                            const uint64_t* w = a.weights + ((m * a.kernel_h + kh) * a.kernel_w + kw) * channel_words;
                            for (int64_t c = 0; c < a.channels; ++c) {
                                const float x = a.input[n * a.image_stride + c * a.channel_stride +
                                                        (ih * a.width + iw) * a.pixel_stride];
                                const float t = a.threshold == nullptr ? 0.0f : a.threshold[c];
                                const int64_t x_sign = x - t >= 0.0f ? 1 : -1;  // sign(0) = +1, NaN -> -1
                                const int64_t w_sign = ((w[c / 64] >> (c % 64)) & 1) ? -1 : 1;
                                d += x_sign * w_sign;
                            }
                        }
                    }
                    const int64_t out = n * a.output_image_stride + m * a.output_channel_stride +
                                        (oh * a.out_w + ow) * a.output_pixel_stride;
                    float y = a.multiplier[m] * static_cast<float>(d) + a.bias[m];
                    for (int k = 0; k < 2; ++k) {
                        if (a.residuals.tensor[k] == nullptr) continue;
                        const float r = a.residuals.tensor[k][out];
                        y += a.residuals.relu[k] && r < 0.0f ? 0.0f : r;
                    }
                    if (a.residuals.activation == 1 || a.residuals.activation == 2) y = y < 0.0f ? 0.0f : y;
                    if (a.residuals.activation == 2) y = y > 6.0f ? 6.0f : y;
                    if (a.residuals.activation == 3) {  // HardSwish: y * clamp(y / 6 + 1/2, 0, 1)
                        const float gate = y * (1.0f / 6.0f) + 0.5f;
                        y *= gate < 0.0f ? 0.0f : gate > 1.0f ? 1.0f : gate;
                    }
                    a.output[out] = y;
                }
            }
        }
    }
}

}  // namespace binarize
