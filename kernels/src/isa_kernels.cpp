// The binary convolution inner loop, compiled once per instruction set.
//
// CMake compiles this file once per ISA of the target: BINARIZE_ISA_SCALAR (baseline flags)
// everywhere; on x86-64 BINARIZE_ISA_AVX2 (-mavx2 -mpopcnt) and BINARIZE_ISA_AVX512
// (-mavx512f/bw/vl/dq/vpopcntdq); on aarch64 BINARIZE_ISA_NEON (traits in neon_isa.h). Only the
// `Isa` traits differ; the packing, the register-blocked loop and the epilogue are the same source.
// Everything lives in a per-ISA namespace and uses no inline library templates (no <algorithm>,
// no <vector>), so no AVX-512 instruction can leak into code shared with other ISAs through
// the linker's deduplication of inline functions.
#include <cstdint>
#include <cstring>

#include "kernel_api.h"

#if defined(BINARIZE_ISA_AVX512)
#define BINARIZE_ISA_NAMESPACE isa_avx512
#define BINARIZE_ISA_NAME "avx512"
#include <immintrin.h>
#elif defined(BINARIZE_ISA_AVX2)
#define BINARIZE_ISA_NAMESPACE isa_avx2
#define BINARIZE_ISA_NAME "avx2"
#include <immintrin.h>
#elif defined(BINARIZE_ISA_NEON)
#define BINARIZE_ISA_NAMESPACE isa_neon
#define BINARIZE_ISA_NAME "neon"
#include <arm_neon.h>
#elif defined(BINARIZE_ISA_SCALAR)
#define BINARIZE_ISA_NAMESPACE isa_scalar
#define BINARIZE_ISA_NAME "scalar"
#else
#error "define one of BINARIZE_ISA_SCALAR, BINARIZE_ISA_AVX2, BINARIZE_ISA_AVX512, BINARIZE_ISA_NEON"
#endif

namespace binarize {
namespace BINARIZE_ISA_NAMESPACE {
namespace {

inline int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }

// Stores an epilogue tile one float at a time: rows[p] holds pixel p's results for kLanes
// channels; channel j of pixel p goes to out[j * channel_stride + p * pixel_stride].
template <int kLanes, int NP, typename Floats>
inline void store_tile_one_by_one(float* out, int64_t channel_stride, int64_t pixel_stride, const Floats (&rows)[NP],
                                  int pixels, int channels) {
    float tile[NP][kLanes];
    static_assert(sizeof(tile) == sizeof(rows), "Floats holds kLanes floats");
    std::memcpy(tile, rows, sizeof(tile));
    for (int j = 0; j < channels; ++j)
        for (int p = 0; p < pixels; ++p) out[j * channel_stride + p * pixel_stride] = tile[p][j];
}

// ---------------------------------------------------------------------------------------------
// ISA traits. Each provides:
//   Vec        kLanes 64-bit words (one word of kLanes different output channels, or a broadcast
//              activation word);
//   Acc        a partial popcount accumulator that may overflow after kStepsPerFlush steps;
//   Total      exact 64-bit popcount totals per lane;
//   load / broadcast / xor_popcount_add / flush        the hot loop;
//   Floats / affine / store_columns                     the epilogue: kLanes float results of one
//              pixel, and their transposed store into NCHW (each channel's pixels contiguous);
//   PackWords / pack_zero / pack_channel / pack_store   the activation packing.
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

    // Epilogue on 8 channels of one pixel. multiplier * d + bias is written with vector
    // operators, like the scalar formula, so the compiler applies the same contraction (fma here).
    using Floats = __m256;
    static Floats affine(Total total, const int32_t* base, const float* multiplier, const float* bias) {
        // (The maskz form because GCC 12's plain _mm512_cvtepi64_epi32 trips -Wmaybe-uninitialized.)
        const __m256i twice = _mm256_slli_epi32(_mm512_maskz_cvtepi64_epi32(0xff, total), 1);
        const __m256i d = _mm256_sub_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(base)), twice);
        return _mm256_loadu_ps(multiplier) * _mm256_cvtepi32_ps(d) + _mm256_loadu_ps(bias);
    }
    // Transpose in registers: the (up to 6) pixel rows are paired into three zmm, two vpermt2ps
    // per channel pair gather channel j's pixels into lanes 0-5 and channel j+1's into lanes
    // 8-13, and masked stores write each run. Scalar stores (one per output, each to another
    // channel plane) cost more than the whole xor/popcount loop of a 64-channel layer.
    template <int NP>
    static void store_columns(float* out, int64_t channel_stride, const Floats (&rows)[NP], int pixels, int channels) {
        static_assert(NP <= 6, "three pixel pairs");
        auto pair = [&](int p) {  // pixels p, p+1 (rows past NP repeat the last; never stored)
            return _mm512_insertf32x8(_mm512_castps256_ps512(rows[p < NP ? p : NP - 1]), rows[p + 1 < NP ? p + 1 : NP - 1], 1);
        };
        const __m512 p01 = pair(0), p23 = pair(2), p45 = pair(4);
        // Lanes 0-3 <- pixels 0-3 of channel 0, lanes 8-11 <- of channel 1 (plus j below).
        const __m512i first = _mm512_setr_epi32(0, 8, 16, 24, 0, 0, 0, 0, 1, 9, 17, 25, 0, 0, 0, 0);
        // Keep lanes 0-3 and 8-11; lanes 4-5 <- pixels 4-5 of channel 0, 12-13 <- of channel 1.
        const __m512i second = _mm512_setr_epi32(0, 1, 2, 3, 16, 24, 0, 0, 8, 9, 10, 11, 17, 25, 0, 0);
        const __mmask16 pixel_lanes = static_cast<__mmask16>((1u << pixels) - 1);
#pragma GCC unroll 4
        for (int j = 0; j < kLanes; j += 2) {
            if (j >= channels) break;
            const __m512i channel = _mm512_set1_epi32(j);
            const __m512 p0123 = _mm512_permutex2var_ps(p01, _mm512_add_epi32(first, channel), p23);
            const __m512 both = _mm512_permutex2var_ps(p0123, _mm512_mask_add_epi32(second, 0x3030, second, channel), p45);
            _mm512_mask_storeu_ps(out + j * channel_stride, pixel_lanes, both);
            if (j + 1 < channels)
                _mm256_mask_storeu_ps(out + (j + 1) * channel_stride, static_cast<__mmask8>(pixel_lanes), _mm512_extractf32x8_ps(both, 1));
        }
    }

    // Packing: 16 pixels (one cache line of a channel plane) per compare; their words in two
    // zmm; a channel sets its bit where !(x >= 0). Masked-off lanes load 0.0, i.e. no bit.
    struct PackWords { __m512i lo, hi; };
    static PackWords pack_zero() { return {_mm512_setzero_si512(), _mm512_setzero_si512()}; }
    static PackWords pack_channel(PackWords words, const float* x16, int pixels, uint64_t bit) {
        const __mmask16 valid = static_cast<__mmask16>(pixels >= 16 ? 0xffff : (1u << pixels) - 1);
        const __mmask16 negative = _mm512_cmp_ps_mask(_mm512_maskz_loadu_ps(valid, x16), _mm512_setzero_ps(), _CMP_NGE_UQ);
        const __m512i bits = _mm512_set1_epi64(static_cast<long long>(bit));
        words.lo = _mm512_mask_or_epi64(words.lo, static_cast<__mmask8>(negative), words.lo, bits);
        words.hi = _mm512_mask_or_epi64(words.hi, static_cast<__mmask8>(negative >> 8), words.hi, bits);
        return words;
    }
    static void pack_store(uint64_t* out16, PackWords words) {
        _mm512_storeu_si512(out16, words.lo);
        _mm512_storeu_si512(out16 + 8, words.hi);
    }
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

    // Epilogue on 4 channels of one pixel (the low halves of the 64-bit totals, which are < 2^31).
    using Floats = __m128;
    static Floats affine(Total total, const int32_t* base, const float* multiplier, const float* bias) {
        const __m128i t = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(total, _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6)));
        const __m128i d = _mm_sub_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(base)), _mm_slli_epi32(t, 1));
        return _mm_loadu_ps(multiplier) * _mm_cvtepi32_ps(d) + _mm_loadu_ps(bias);
    }
    template <int NP>
    static void store_columns(float* out, int64_t channel_stride, const Floats (&rows)[NP], int pixels, int channels) {
        store_tile_one_by_one<kLanes>(out, channel_stride, 1, rows, pixels, channels);
    }

    // Packing: 16 pixels' words in four ymm; the 32-bit compare masks are widened to 64 bits.
    struct PackWords { __m256i w[4]; };
    static PackWords pack_zero() { return {{_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()}}; }
    static PackWords pack_channel(PackWords words, const float* x16, int pixels, uint64_t bit) {
        const __m256i bits = _mm256_set1_epi64x(static_cast<long long>(bit));
        for (int half = 0; half < 2; ++half) {
            // Lanes past `pixels` are not loaded (vmaskmovps does not fault there) and read 0.0.
            const __m256i valid = _mm256_cmpgt_epi32(_mm256_set1_epi32(pixels - 8 * half), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
            const __m256 x = _mm256_maskload_ps(x16 + 8 * half, valid);
            const __m256i negative = _mm256_castps_si256(_mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_NGE_UQ));
            words.w[2 * half] = _mm256_or_si256(words.w[2 * half], _mm256_and_si256(bits, _mm256_cvtepi32_epi64(_mm256_castsi256_si128(negative))));
            words.w[2 * half + 1] = _mm256_or_si256(words.w[2 * half + 1], _mm256_and_si256(bits, _mm256_cvtepi32_epi64(_mm256_extracti128_si256(negative, 1))));
        }
        return words;
    }
    static void pack_store(uint64_t* out16, PackWords words) {
        for (int i = 0; i < 4; ++i) _mm256_storeu_si256(reinterpret_cast<__m256i*>(out16 + 4 * i), words.w[i]);
    }
};
#elif defined(BINARIZE_ISA_NEON)
#include "neon_isa.h"
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

    using Floats = float;
    static Floats affine(Total total, const int32_t* base, const float* multiplier, const float* bias) {
        return *multiplier * static_cast<float>(*base - 2 * static_cast<int32_t>(total)) + *bias;
    }
    template <int NP>
    static void store_columns(float* out, int64_t channel_stride, const Floats (&rows)[NP], int pixels, int channels) {
        store_tile_one_by_one<kLanes>(out, channel_stride, 1, rows, pixels, channels);
    }

    struct PackWords { uint64_t w[16]; };
    static PackWords pack_zero() { return {}; }
    static PackWords pack_channel(PackWords words, const float* x16, int pixels, uint64_t bit) {
        for (int p = 0; p < pixels; ++p) words.w[p] |= !(x16[p] >= 0.0f) ? bit : 0;
        return words;
    }
    static void pack_store(uint64_t* out16, PackWords words) {
        for (int p = 0; p < 16; ++p) out16[p] = words.w[p];
    }
};
#endif

constexpr int kBlockChannels = Isa::kLanes * Isa::kVectors;  // MB
constexpr int kBlockPixels = Isa::kPixels;                   // P

// ---------------------------------------------------------------------------------------------
// Activation packing: bit = !(x >= 0), so sign(0) = +1 and NaN binarizes to -1 as in the
// reference. One pass over the float input writes the padded NHWC word layout described above
// popcount_block. The input is walked as one flat sequence of pixels (row-major, so a group
// may span rows and narrow 7- or 14-pixel rows still fill whole vectors); for a convolution
// the 16 pixels of a group are contiguous floats of each channel plane, so each channel costs
// one vector compare + masked OR (Isa::pack_channel). Strided pixels (BinaryLinear rows) take
// the plain per-float loop.
// ---------------------------------------------------------------------------------------------
constexpr int kPackGroup = 16;

void pack_group_any_stride(const PackArgs& a, const float* src, int pixels, int64_t cw, uint64_t* words) {
    const int64_t channels = min_i64(64, a.channels - cw * 64);
    for (int p = 0; p < pixels; ++p) {
        uint64_t word = 0;
        const float* x = src + p * a.pixel_stride + cw * 64 * a.channel_stride;
        for (int64_t c = 0; c < channels; ++c) word |= !(x[c * a.channel_stride] >= 0.0f) ? uint64_t{1} << c : 0;
        words[p] = word;
    }
}

void pack_pixels(const PackArgs& a, int64_t pixel_begin, int64_t pixel_end) {
    int64_t h = pixel_begin / a.width, w = pixel_begin % a.width;
    for (int64_t p0 = pixel_begin; p0 < pixel_end; p0 += kPackGroup) {
        const int pixels = static_cast<int>(min_i64(kPackGroup, pixel_end - p0));
        uint64_t* dst[kPackGroup];  // each pixel's words in the padded buffer
        for (int p = 0; p < pixels; ++p) {
            dst[p] = a.packed + ((h + a.pad_top) * a.padded_width + a.pad_left + w) * a.channel_words;
            if (++w == a.width) w = 0, ++h;
        }
        const float* src = a.input + p0 * a.pixel_stride;
        for (int64_t cw = 0; cw < a.channel_words; ++cw) {
            uint64_t words[kPackGroup];
            if (a.pixel_stride == 1) {
                const int64_t channels = min_i64(64, a.channels - cw * 64);
                typename Isa::PackWords packed = Isa::pack_zero();
                for (int64_t c = 0; c < channels; ++c) {
                    // The 64 channel planes are 64 interleaved streams, too many for the hardware
                    // prefetchers to follow: ask for this plane's line four groups ahead.
                    __builtin_prefetch(src + (cw * 64 + c) * a.channel_stride + 4 * kPackGroup);
                    packed = Isa::pack_channel(packed, src + (cw * 64 + c) * a.channel_stride, pixels, uint64_t{1} << c);
                }
                Isa::pack_store(words, packed);
            } else {
                pack_group_any_stride(a, src, pixels, cw, words);
            }
            for (int p = 0; p < pixels; ++p) dst[p][cw] = words[p];
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
// Register blocking: NP pixels x MB channels of popcount accumulators stay in registers for the
// whole reduction; per step we load kVectors weight vectors once and broadcast each pixel's
// activation word once, then do NP*kVectors xor+popcount+add. Everything is integer; the float
// transform happens once per output in the epilogue. NP is P, or P - 1 for the blocks that let
// the pixel count be tiled exactly (ConvArgs::full_blocks).
//
// Padding: the padded buffer makes every tap readable, but a padded tap has to contribute 0,
// not +/-1 per channel. Reading a 0 word there adds popcount(weight word) to the total, so the
// epilogue computes D = pattern_base[pattern(q)][m] - 2 * total, where pattern_base holds
// (valid taps * C) + 2 * (sum of popcount(weights) over the taps that fall into padding) for
// each distinct padding pattern (precomputed once per input size). Interior pixels share one
// pattern with no correction, so border handling costs nothing inside this loop.
// ---------------------------------------------------------------------------------------------
template <int NP>
inline void popcount_block(const uint64_t* image, const int64_t* pixel_offsets, const int64_t* step_offsets,
                           int64_t steps, const uint64_t* weights, typename Isa::Total (&total)[NP][Isa::kVectors]) {
#pragma GCC unroll 8
    for (int p = 0; p < NP; ++p)
#pragma GCC unroll 8
        for (int v = 0; v < Isa::kVectors; ++v) total[p][v] = Isa::zero_total();

    for (int64_t k0 = 0; k0 < steps; k0 += min_i64(Isa::kStepsPerFlush, steps - k0)) {
        const int64_t k1 = k0 + min_i64(Isa::kStepsPerFlush, steps - k0);
        typename Isa::Acc acc[NP][Isa::kVectors];
#pragma GCC unroll 8
        for (int p = 0; p < NP; ++p)
#pragma GCC unroll 8
            for (int v = 0; v < Isa::kVectors; ++v) acc[p][v] = Isa::zero_acc();

        for (int64_t k = k0; k < k1; ++k) {
            const uint64_t* step_image = image + step_offsets[k];
            const uint64_t* step_weights = weights + k * kBlockChannels;
            typename Isa::Vec w[Isa::kVectors];
#pragma GCC unroll 8
            for (int v = 0; v < Isa::kVectors; ++v) w[v] = Isa::load(step_weights + v * Isa::kLanes);
#pragma GCC unroll 8
            for (int p = 0; p < NP; ++p) {
                const typename Isa::Vec x = Isa::broadcast(step_image[pixel_offsets[p]]);
#pragma GCC unroll 8
                for (int v = 0; v < Isa::kVectors; ++v) acc[p][v] = Isa::xor_popcount_add(acc[p][v], x, w[v]);
            }
        }
#pragma GCC unroll 8
        for (int p = 0; p < NP; ++p)
#pragma GCC unroll 8
            for (int v = 0; v < Isa::kVectors; ++v) total[p][v] = Isa::flush(total[p][v], acc[p][v]);
    }
}

// One register block: `pixels` (<= NP) output pixels from q0 on, channels m0 .. m0 + MB - 1.
template <int NP>
void conv_block(const ConvArgs& a, const uint64_t* image, const uint64_t* weights, int64_t m0, int64_t q0, int pixels,
                float* out_image) {
    // A partial block (only when the pixel count cannot be tiled exactly) repeats its last
    // pixel so the loop never changes shape.
    int64_t offsets[NP];
    const int32_t* bases[NP];
    for (int p = 0; p < NP; ++p) {
        const int64_t q = q0 + (p < pixels ? p : pixels - 1);
        offsets[p] = a.pixel_offsets[q];
        bases[p] = a.pattern_base + a.pixel_pattern[q] * a.out_channels_padded + m0;
    }
    typename Isa::Total total[NP][Isa::kVectors];
    popcount_block<NP>(image, offsets, a.step_offsets, a.reduction_words, weights, total);

    // Epilogue: exact integer D (|D| <= KH*KW*C < 2^31, checked when the kernel is created),
    // then the fused per-channel transform in float, vectorized over the channels of each
    // vector (multiplier and bias are padded to a multiple of MB) ...
    float* out = out_image + q0 * a.output_pixel_stride + m0 * a.output_channel_stride;
#pragma GCC unroll 8
    for (int v = 0; v < Isa::kVectors; ++v) {
        const int channels = static_cast<int>(min_i64(Isa::kLanes, a.out_channels - m0 - v * Isa::kLanes));
        if (channels <= 0) break;
        typename Isa::Floats rows[NP];
#pragma GCC unroll 8
        for (int p = 0; p < NP; ++p)
            rows[p] = Isa::affine(total[p][v], bases[p] + v * Isa::kLanes, a.multiplier + m0 + v * Isa::kLanes,
                                  a.bias + m0 + v * Isa::kLanes);
        // ... then stored: for NCHW (pixel stride 1) each channel's pixels are one contiguous run;
        // BinaryLinear's [rows][M] output (channel stride 1) is stored one float at a time.
        float* out_v = out + v * Isa::kLanes * a.output_channel_stride;
        if (a.output_pixel_stride == 1)
            Isa::store_columns(out_v, a.output_channel_stride, rows, pixels, channels);
        else
            store_tile_one_by_one<Isa::kLanes>(out_v, a.output_channel_stride, a.output_pixel_stride, rows, pixels, channels);
    }
}

void conv_tile(const ConvArgs& a, int64_t image, int64_t channel_block, int64_t block_begin, int64_t block_end) {
    const uint64_t* packed_image = a.packed_input + image * a.input_image_words;
    const uint64_t* weights = a.packed_weights + channel_block * a.reduction_words * kBlockChannels;
    const int64_t m0 = channel_block * kBlockChannels;
    float* out_image = a.output + image * a.output_image_stride;
    for (int64_t b = block_begin; b < block_end; ++b) {
        const bool full = b < a.full_blocks;
        const int64_t q0 = b * kBlockPixels - (full ? 0 : b - a.full_blocks);
        const int pixels = static_cast<int>(min_i64(full ? kBlockPixels : kBlockPixels - 1, a.output_pixels - q0));
        if (full)
            conv_block<kBlockPixels>(a, packed_image, weights, m0, q0, pixels, out_image);
        else
            conv_block<kBlockPixels - 1>(a, packed_image, weights, m0, q0, pixels, out_image);
    }
}

}  // namespace

extern const IsaKernels kernels;
const IsaKernels kernels = {BINARIZE_ISA_NAME, kBlockChannels, kBlockPixels, pack_pixels, conv_tile};

}  // namespace BINARIZE_ISA_NAMESPACE
}  // namespace binarize
