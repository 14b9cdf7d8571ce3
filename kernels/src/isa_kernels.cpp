// The binary convolution inner loop, compiled once per instruction set.
//
// CMake compiles this file three times: BINARIZE_ISA_SCALAR (baseline flags), BINARIZE_ISA_AVX2
// (-mavx2 -mpopcnt) and BINARIZE_ISA_AVX512 (-mavx512f/bw/vl/dq/vpopcntdq). Only the `Isa`
// traits differ; the packing, the register-blocked loop and the epilogue are the same source.
// Everything lives in a per-ISA namespace and uses no inline library templates (no <algorithm>,
// no <vector>), so no AVX-512 instruction can leak into code shared with other ISAs through
// the linker's deduplication of inline functions.
#include <cstdint>

#include "kernel_api.h"

#if defined(BINARIZE_ISA_AVX512)
#define BINARIZE_ISA_NAMESPACE isa_avx512
#define BINARIZE_ISA_NAME "avx512"
#include <immintrin.h>
#elif defined(BINARIZE_ISA_AVX2)
#define BINARIZE_ISA_NAMESPACE isa_avx2
#define BINARIZE_ISA_NAME "avx2"
#include <immintrin.h>
#elif defined(BINARIZE_ISA_SCALAR)
#define BINARIZE_ISA_NAMESPACE isa_scalar
#define BINARIZE_ISA_NAME "scalar"
#else
#error "define one of BINARIZE_ISA_SCALAR, BINARIZE_ISA_AVX2, BINARIZE_ISA_AVX512"
#endif

namespace binarize {
namespace BINARIZE_ISA_NAMESPACE {
namespace {

inline int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }

// ---------------------------------------------------------------------------------------------
// ISA traits. Each provides:
//   Vec        kLanes 64-bit words (one word of kLanes different output channels, or a broadcast
//              activation word);
//   Acc        a partial popcount accumulator that may overflow after kStepsPerFlush steps;
//   Total      exact 64-bit popcount totals per lane;
//   load / broadcast / xor_popcount_add / flush / store.
// ---------------------------------------------------------------------------------------------
#if defined(BINARIZE_ISA_AVX512)
struct Isa {
    // 4 vectors x 8 lanes = 32 output channels, times 6 pixels = 24 zmm accumulators
    // + 4 weight vectors + 1 broadcast: 29 of the 32 zmm registers.
    static constexpr int kLanes = 8, kVectors = 4, kPixels = 6;
    static constexpr int64_t kStepsPerFlush = INT64_MAX;  // vpopcntq counts straight into 64-bit lanes
    using Vec = __m512i;
    using Acc = __m512i;
    using Total = __m512i;
    static Vec load(const uint64_t* p) { return _mm512_loadu_si512(p); }
    static Vec broadcast(uint64_t w) { return _mm512_set1_epi64(static_cast<long long>(w)); }
    static Acc zero_acc() { return _mm512_setzero_si512(); }
    static Total zero_total() { return _mm512_setzero_si512(); }
    static Acc xor_popcount_add(Acc acc, Vec x, Vec w) {
        return _mm512_add_epi64(acc, _mm512_popcnt_epi64(_mm512_xor_si512(x, w)));
    }
    static Total flush(Total total, Acc acc) { return _mm512_add_epi64(total, acc); }
    static void store(uint64_t* p, Total t) { _mm512_storeu_si512(p, t); }

    // Packing: 8 pixels' words in one zmm; a channel sets its bit where !(x >= 0).
    using PackWords = __m512i;
    static PackWords pack_zero() { return _mm512_setzero_si512(); }
    static PackWords pack_channel(PackWords words, const float* x8, uint64_t bit) {
        const __mmask8 negative = _mm256_cmp_ps_mask(_mm256_loadu_ps(x8), _mm256_setzero_ps(), _CMP_NGE_UQ);
        return _mm512_mask_or_epi64(words, negative, words, _mm512_set1_epi64(static_cast<long long>(bit)));
    }
    static void pack_store(uint64_t* out8, PackWords words) { _mm512_storeu_si512(out8, words); }
};
#elif defined(BINARIZE_ISA_AVX2)
struct Isa {
    // AVX2 has no vector popcount: count nibbles with a 16-entry vpshufb table into byte
    // counters, and fold bytes into 64-bit lanes with vpsadbw only every kStepsPerFlush steps.
    // 2 vectors x 4 lanes = 8 channels, times 3 pixels = 6 byte accumulators; with weights,
    // broadcast, table, mask and temporaries this fills the 16 ymm registers.
    static constexpr int kLanes = 4, kVectors = 2, kPixels = 3;
    static constexpr int64_t kStepsPerFlush = 31;  // each step adds <= 8 per byte: 31 * 8 < 256
    using Vec = __m256i;
    using Acc = __m256i;
    using Total = __m256i;
    static Vec load(const uint64_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
    static Vec broadcast(uint64_t w) { return _mm256_set1_epi64x(static_cast<long long>(w)); }
    static Acc zero_acc() { return _mm256_setzero_si256(); }
    static Total zero_total() { return _mm256_setzero_si256(); }
    static Acc xor_popcount_add(Acc acc, Vec x, Vec w) {
        const __m256i nibble_popcount = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
        const __m256i low_nibble = _mm256_set1_epi8(0x0f);
        const __m256i v = _mm256_xor_si256(x, w);
        const __m256i lo = _mm256_and_si256(v, low_nibble);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low_nibble);
        acc = _mm256_add_epi8(acc, _mm256_shuffle_epi8(nibble_popcount, lo));
        return _mm256_add_epi8(acc, _mm256_shuffle_epi8(nibble_popcount, hi));
    }
    static Total flush(Total total, Acc acc) {
        return _mm256_add_epi64(total, _mm256_sad_epu8(acc, _mm256_setzero_si256()));
    }
    static void store(uint64_t* p, Total t) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), t); }

    // Packing: 8 pixels' words in two ymm; the 32-bit compare masks are widened to 64 bits.
    struct PackWords { __m256i lo, hi; };
    static PackWords pack_zero() { return {_mm256_setzero_si256(), _mm256_setzero_si256()}; }
    static PackWords pack_channel(PackWords words, const float* x8, uint64_t bit) {
        const __m256i negative = _mm256_castps_si256(_mm256_cmp_ps(_mm256_loadu_ps(x8), _mm256_setzero_ps(), _CMP_NGE_UQ));
        const __m256i bits = _mm256_set1_epi64x(static_cast<long long>(bit));
        words.lo = _mm256_or_si256(words.lo, _mm256_and_si256(bits, _mm256_cvtepi32_epi64(_mm256_castsi256_si128(negative))));
        words.hi = _mm256_or_si256(words.hi, _mm256_and_si256(bits, _mm256_cvtepi32_epi64(_mm256_extracti128_si256(negative, 1))));
        return words;
    }
    static void pack_store(uint64_t* out8, PackWords words) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out8), words.lo);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out8 + 4), words.hi);
    }
};
#else
struct Isa {
    // Portable fallback: one channel per "vector"; 4 channels x 4 pixels of scalar accumulators.
    static constexpr int kLanes = 1, kVectors = 4, kPixels = 4;
    static constexpr int64_t kStepsPerFlush = INT64_MAX;
    using Vec = uint64_t;
    using Acc = uint64_t;
    using Total = uint64_t;
    static Vec load(const uint64_t* p) { return *p; }
    static Vec broadcast(uint64_t w) { return w; }
    static Acc zero_acc() { return 0; }
    static Total zero_total() { return 0; }
    static Acc xor_popcount_add(Acc acc, Vec x, Vec w) {
        return acc + static_cast<uint64_t>(__builtin_popcountll(x ^ w));
    }
    static Total flush(Total total, Acc acc) { return total + acc; }
    static void store(uint64_t* p, Total t) { *p = t; }

    struct PackWords { uint64_t w[8]; };
    static PackWords pack_zero() { return {}; }
    static PackWords pack_channel(PackWords words, const float* x8, uint64_t bit) {
        for (int p = 0; p < 8; ++p) words.w[p] |= !(x8[p] >= 0.0f) ? bit : 0;
        return words;
    }
    static void pack_store(uint64_t* out8, PackWords words) {
        for (int p = 0; p < 8; ++p) out8[p] = words.w[p];
    }
};
#endif

constexpr int kBlockChannels = Isa::kLanes * Isa::kVectors;  // MB
constexpr int kBlockPixels = Isa::kPixels;                   // P

// ---------------------------------------------------------------------------------------------
// Activation packing: bit = !(x >= 0), so sign(0) = +1 and NaN binarizes to -1 as in the
// reference. One pass over the float input writes the padded NHWC word layout described above
// popcount_block. For a convolution the 8 pixels of a group are contiguous floats of each
// channel plane, so each channel costs one vector compare + masked OR (Isa::pack_channel).
// Partial groups and strided pixels (BinaryLinear rows) take the plain per-float loop.
// ---------------------------------------------------------------------------------------------
constexpr int kPackGroup = 8;

void pack_group_any_stride(const PackArgs& a, const float* src, int64_t pixels, int64_t cw, uint64_t* words) {
    const int64_t channels = min_i64(64, a.channels - cw * 64);
    for (int64_t p = 0; p < pixels; ++p) {
        uint64_t word = 0;
        const float* x = src + p * a.pixel_stride + cw * 64 * a.channel_stride;
        for (int64_t c = 0; c < channels; ++c) word |= !(x[c * a.channel_stride] >= 0.0f) ? uint64_t{1} << c : 0;
        words[p] = word;
    }
}

void pack_rows(const PackArgs& a, int64_t row_begin, int64_t row_end) {
    for (int64_t h = row_begin; h < row_end; ++h) {
        uint64_t* out_row = a.packed + ((h + a.pad_top) * a.padded_width + a.pad_left) * a.channel_words;
        for (int64_t w0 = 0; w0 < a.width; w0 += kPackGroup) {
            const int64_t pixels = min_i64(kPackGroup, a.width - w0);
            const float* src = a.input + (h * a.width + w0) * a.pixel_stride;
            for (int64_t cw = 0; cw < a.channel_words; ++cw) {
                uint64_t words[kPackGroup];
                if (pixels == kPackGroup && a.pixel_stride == 1) {
                    const int64_t channels = min_i64(64, a.channels - cw * 64);
                    typename Isa::PackWords packed = Isa::pack_zero();
                    for (int64_t c = 0; c < channels; ++c)
                        packed = Isa::pack_channel(packed, src + (cw * 64 + c) * a.channel_stride, uint64_t{1} << c);
                    Isa::pack_store(words, packed);
                } else {
                    pack_group_any_stride(a, src, pixels, cw, words);
                }
                for (int64_t p = 0; p < pixels; ++p) out_row[(w0 + p) * a.channel_words + cw] = words[p];
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// THE HOT LOOP.
//
// Layouts (all 64-bit words, bit b of a word = channel 64*word + b, bit value 1 = sign -1):
//   activations  [Hp][Wp][CW]       padded NHWC image, padding words are 0 (= sign +1);
//   weights      [M/MB][K][MB]      K = KH*KW*CW reduction steps, k = (kh*KW + kw)*CW + cw;
//                                   the MB words of one step are the MB output channels of the
//                                   block, so one vector load feeds kLanes channels.
// A reduction step k of output pixel q reads the activation word at
//   pixel_offsets[q] + step_offsets[k],
// i.e. the receptive field is walked through a precomputed offset table (an indirect
// convolution): no im2col buffer, any stride/dilation, one code path.
//
// Register blocking: P pixels x MB channels of popcount accumulators stay in registers for the
// whole reduction; per step we load kVectors weight vectors once and broadcast each pixel's
// activation word once, then do P*kVectors xor+popcount+add. Everything is integer; the float
// transform happens once per output in the epilogue.
//
// Padding: the padded buffer makes every tap readable, but a padded tap has to contribute 0,
// not +/-1 per channel. Reading a 0 word there adds popcount(weight word) to the total, so the
// epilogue computes D = pattern_base[pattern(q)][m] - 2 * total, where pattern_base holds
// (valid taps * C) + 2 * (sum of popcount(weights) over the taps that fall into padding) for
// each distinct padding pattern (precomputed once per input size). Interior pixels share one
// pattern with no correction, so border handling costs nothing inside this loop.
// ---------------------------------------------------------------------------------------------
inline void popcount_block(const uint64_t* image, const int64_t* pixel_offsets, const int64_t* step_offsets,
                           int64_t steps, const uint64_t* weights, uint64_t* totals /* [P][MB] */) {
    typename Isa::Total total[kBlockPixels][Isa::kVectors];
    for (int p = 0; p < kBlockPixels; ++p)
        for (int v = 0; v < Isa::kVectors; ++v) total[p][v] = Isa::zero_total();

    for (int64_t k0 = 0; k0 < steps; k0 += min_i64(Isa::kStepsPerFlush, steps - k0)) {
        const int64_t k1 = k0 + min_i64(Isa::kStepsPerFlush, steps - k0);
        typename Isa::Acc acc[kBlockPixels][Isa::kVectors];
#pragma GCC unroll 8
        for (int p = 0; p < kBlockPixels; ++p)
#pragma GCC unroll 8
            for (int v = 0; v < Isa::kVectors; ++v) acc[p][v] = Isa::zero_acc();

        for (int64_t k = k0; k < k1; ++k) {
            const uint64_t* step_image = image + step_offsets[k];
            const uint64_t* step_weights = weights + k * kBlockChannels;
            typename Isa::Vec w[Isa::kVectors];
#pragma GCC unroll 8
            for (int v = 0; v < Isa::kVectors; ++v) w[v] = Isa::load(step_weights + v * Isa::kLanes);
#pragma GCC unroll 8
            for (int p = 0; p < kBlockPixels; ++p) {
                const typename Isa::Vec x = Isa::broadcast(step_image[pixel_offsets[p]]);
#pragma GCC unroll 8
                for (int v = 0; v < Isa::kVectors; ++v) acc[p][v] = Isa::xor_popcount_add(acc[p][v], x, w[v]);
            }
        }
#pragma GCC unroll 8
        for (int p = 0; p < kBlockPixels; ++p)
#pragma GCC unroll 8
            for (int v = 0; v < Isa::kVectors; ++v) total[p][v] = Isa::flush(total[p][v], acc[p][v]);
    }
    for (int p = 0; p < kBlockPixels; ++p)
        for (int v = 0; v < Isa::kVectors; ++v) Isa::store(totals + p * kBlockChannels + v * Isa::kLanes, total[p][v]);
}

void conv_tile(const ConvArgs& a, int64_t image, int64_t channel_block, int64_t pixel_begin, int64_t pixel_end) {
    const uint64_t* packed_image = a.packed_input + image * a.input_image_words;
    const uint64_t* weights = a.packed_weights + channel_block * a.reduction_words * kBlockChannels;
    const int64_t m0 = channel_block * kBlockChannels;
    const int64_t channels = min_i64(kBlockChannels, a.out_channels - m0);
    float* out_image = a.output + image * a.output_image_stride;

    for (int64_t q0 = pixel_begin; q0 < pixel_end; q0 += kBlockPixels) {
        const int64_t pixels = min_i64(kBlockPixels, pixel_end - q0);
        // A partial block repeats its last pixel so the loop above never changes shape.
        int64_t offsets[kBlockPixels];
        for (int p = 0; p < kBlockPixels; ++p) offsets[p] = a.pixel_offsets[q0 + min_i64(p, pixels - 1)];
        uint64_t totals[kBlockPixels * kBlockChannels];
        popcount_block(packed_image, offsets, a.step_offsets, a.reduction_words, weights, totals);

        // Epilogue: exact integer D (|D| <= KH*KW*C < 2^31, checked when the kernel is created),
        // then the fused per-channel transform in float, computed for the whole block so the
        // channel loop vectorizes (multiplier and bias are padded to a multiple of MB) ...
        float results[kBlockPixels][kBlockChannels];
        for (int64_t p = 0; p < pixels; ++p) {
            const int64_t* base = a.pattern_base + static_cast<int64_t>(a.pixel_pattern[q0 + p]) * a.out_channels_padded + m0;
            for (int j = 0; j < kBlockChannels; ++j) {
                const int32_t d = static_cast<int32_t>(base[j]) - 2 * static_cast<int32_t>(totals[p * kBlockChannels + j]);
                results[p][j] = a.multiplier[m0 + j] * static_cast<float>(d) + a.bias[m0 + j];
            }
        }
        // ... then stored: for NCHW each channel's pixels are a contiguous run.
        float* out = out_image + q0 * a.output_pixel_stride + m0 * a.output_channel_stride;
        for (int64_t j = 0; j < channels; ++j)
            for (int64_t p = 0; p < pixels; ++p) out[j * a.output_channel_stride + p * a.output_pixel_stride] = results[p][j];
    }
}

}  // namespace

extern const IsaKernels kernels;
const IsaKernels kernels = {BINARIZE_ISA_NAME, kBlockChannels, kBlockPixels, pack_rows, conv_tile};

}  // namespace BINARIZE_ISA_NAMESPACE
}  // namespace binarize
