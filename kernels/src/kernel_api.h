// Plain-data interface between the kernel object (binary_conv_kernel.cpp) and the ISA-specific
// kernels (isa_kernels.cpp, compiled once per instruction set with different target flags).
//
// This header deliberately holds only POD structs and declarations: anything inline or templated
// here would be compiled with AVX-512 flags in one translation unit and generic flags in another,
// and the linker could keep the AVX-512 copy for everyone (an illegal instruction on AVX2 CPUs).
#pragma once

#include <cstdint>

namespace binarize {

// Packing of one image's float activations into sign bits (bit 1 = negative), laid out
// [Hp][Wp][CW] 64-bit words: the padded image, NHWC, channels packed 64 per word (padding pixels
// are zero words).
struct PackArgs {
    const float* input;      // the image; pixel (h, w) channel c at input[c*channel_stride + (h*W + w)*pixel_stride]
    int64_t channels;        // C
    int64_t channel_stride;  // in floats
    int64_t pixel_stride;    // in floats
    int64_t height, width;   // H, W of the unpadded input
    uint64_t* packed;        // the image's packed buffer; padding words must already be zero
    int64_t padded_width;    // Wp
    int64_t channel_words;   // CW = ceil(C / 64)
    int64_t pad_top, pad_left;
    const float* threshold;  // [C]: channel c's bit is sign(x - threshold[c]) (BinaryConv2d v2); nullptr = 0
};

// What the epilogue adds to the result, in this order, and applies last:
// Y = act(((multiplier * D + bias) + f0(R0)) + f1(R1)) with Rk = tensor[k] laid out like the output
// (nullptr: not added), fk(r) = (r < 0 ? 0 : r) where relu[k] (a ReLU that keeps NaN), else r,
// and act the BinaryConv2d v4 `activation` (0 none, 1 ReLU, 2 ReLU6, 3 HardSwish; NaN kept).
// BinaryConv2d / BinaryLinear v2 have R0 only, v3 adds R1 and the ReLUs (attribute
// residual_relu). A convolution's Rk may instead hold
// period[k] channels (0: the output's count), tiled: output channel m reads channel m % period[k]
// (BinaryConv2d v4's widening shortcut read in place); period[k] is then a multiple of the ISA's
// channels_per_block, so that a channel block never wraps.
struct Residuals {
    const float* tensor[2];
    bool relu[2];
    int64_t period[2];
    int activation;

    // The slots in use, 0 .. 2 (a node may give input 6 and leave input 5 empty: 2, the first one
    // null). The ISA kernels specialise their epilogue on it.
    int slots() const { return tensor[1] != nullptr ? 2 : tensor[0] != nullptr ? 1 : 0; }
};

// One binary convolution over packed activations. Output channels are processed in blocks of
// IsaKernels::channels_per_block (MB); the weights are stored [M_padded / MB][K][MB] elements of
// IsaKernels::weight_step_bytes so that the MB channels' weights of one reduction step k (one
// 64-channel word) are contiguous (one vector load per lane group and sub-step).
struct ConvArgs {
    const uint64_t* packed_input;   // [N][Hp][Wp][CW]
    int64_t input_image_words;      // Hp * Wp * CW
    const void* packed_weights;     // [M_padded / MB][K][MB] elements, zero for channels >= M
    int64_t reduction_steps;        // K = KH * KW * CW
    const int64_t* step_offsets;    // [K]: word offset of reduction step k from a pixel's origin
    const int64_t* pixel_offsets;   // [Q]: word offset of output pixel q's receptive-field origin
    const int32_t* pixel_pattern;   // [Q]: padding pattern of output pixel q
    const int32_t* pattern_base;    // [patterns][M_padded]: D = pattern_base - 2 * popcount total
    int64_t output_pixels;          // Q = OH * OW
    // Pixel blocks: blocks [0, full_blocks) hold P pixels each, the later ones P - 1, so that
    // Q = full_blocks * P + short_blocks * (P - 1) without idle lanes where Q allows; where it
    // does not (tiny Q), every block is a P block and the last one is partial.
    int64_t full_blocks;
    int64_t out_channels;           // M
    int64_t out_channels_padded;    // M rounded up to a multiple of MB
    const float* multiplier;        // [M_padded] (zero beyond M)
    const float* bias;              // [M_padded] (zero beyond M)
    float* output;
    int64_t output_image_stride, output_channel_stride, output_pixel_stride;  // in floats
    Residuals residuals;            // added to the output (v2, v3)
};

struct IsaKernels {
    const char* name;
    int64_t channels_per_block;  // MB: output channels per tile (and per register block)
    int64_t pixels_per_block;    // P: output pixels per tile (the epilogue's; a register block may hold fewer)
    // The bytes of one output channel's weights per reduction step (a 64-channel word): 8, the
    // word; AVX2's byte tables: 16, one per nibble.
    int64_t weight_step_bytes;
    // Writes the [M_padded / MB][K][MB] layout of ConvArgs::packed_weights from the ONNX layout
    // [M][KH][KW][CW] (`channel_words` = KH * KW * CW words per output channel) into `blocked`,
    // M_padded * K * weight_step_bytes zero bytes.
    void (*block_weights)(const uint64_t* words, int64_t out_channels, int64_t channel_words, void* blocked);
    // Packs input pixels [pixel_begin, pixel_end) of one image (row-major pixel index h * W + w).
    void (*pack_pixels)(const PackArgs& args, int64_t pixel_begin, int64_t pixel_end);
    // Computes pixel blocks [block_begin, block_end) of image `image` for channel block `channel_block`.
    void (*conv_tile)(const ConvArgs& args, int64_t image, int64_t channel_block, int64_t block_begin,
                      int64_t block_end);
};

namespace isa_scalar { extern const IsaKernels kernels; }
#if defined(BINARIZE_X86_KERNELS)
namespace isa_avx2 { extern const IsaKernels kernels; }
namespace isa_avx512bw { extern const IsaKernels kernels; }
namespace isa_avx512 { extern const IsaKernels kernels; }
#endif
#if defined(BINARIZE_NEON_KERNELS)
namespace isa_neon { extern const IsaKernels kernels; }
#endif

}  // namespace binarize
