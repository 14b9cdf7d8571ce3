// The binary convolution inner loop, compiled once per instruction set.
//
// CMake compiles this file once per path of the target: BINARIZE_ISA_SCALAR (baseline flags)
// everywhere; on x86-64 BINARIZE_ISA_AVX2 (-mavx2 -mpopcnt), BINARIZE_ISA_AVX512BW
// (-mavx512f/bw/vl/dq) and BINARIZE_ISA_AVX512 (the same + -mavx512vpopcntdq); on aarch64
// BINARIZE_ISA_NEON (traits in neon_isa.h). Only the `Isa` traits differ; the packing, the
// register-blocked loop and the epilogue are the same source.
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
#elif defined(BINARIZE_ISA_AVX512BW)
#define BINARIZE_ISA_NAMESPACE isa_avx512bw
#define BINARIZE_ISA_NAME "avx512bw"
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
#error "define one of BINARIZE_ISA_SCALAR, BINARIZE_ISA_AVX2, BINARIZE_ISA_AVX512BW, BINARIZE_ISA_AVX512, BINARIZE_ISA_NEON"
#endif

namespace binarize {
namespace BINARIZE_ISA_NAMESPACE {
namespace {

inline int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }

// The residuals (kernel_api.h) of the tile that starts `offset` floats further into each one.
inline Residuals residuals_at(const Residuals& r, int64_t offset) {
    return {{r.tensor[0] == nullptr ? nullptr : r.tensor[0] + offset, r.tensor[1] == nullptr ? nullptr : r.tensor[1] + offset},
            {r.relu[0], r.relu[1]}, {r.period[0], r.period[1]}, r.activation};
}

// The residuals of output channels m0 .. of one image, each at its channel m0 (m0 % period for a
// tiled one, kernel_api.h), so that a tile adds the same offsets to every slot.
inline Residuals residuals_of_channels(const ConvArgs& a, int64_t image, int64_t m0) {
    Residuals r = a.residuals;
    for (int k = 0; k < 2; ++k) {
        if (r.tensor[k] == nullptr) continue;
        const int64_t period = r.period[k];
        r.tensor[k] += period == 0 ? image * a.output_image_stride + m0 * a.output_channel_stride
                                   : (image * period + m0 % period) * a.output_channel_stride;
    }
    return r;
}

// The residuals with the slots past the first kResiduals (Residuals::slots) as compile-time nulls,
// and without kActivated a compile-time activation 0, so that the stores of the epilogue carry no
// test for them.
template <int kResiduals, bool kActivated>
inline Residuals first_residuals(const Residuals& r) {
    return {{kResiduals > 0 ? r.tensor[0] : nullptr, kResiduals > 1 ? r.tensor[1] : nullptr}, {r.relu[0], r.relu[1]},
            {r.period[0], r.period[1]}, kActivated ? r.activation : 0};
}

inline float rectified(float r, bool relu) { return relu && r < 0.0f ? 0.0f : r; }

// BinaryConv2d v4's activation of one output (kernel_api.h), NaN passing through.
inline float activated(float y, int activation) {
    switch (activation) {
        case 1: return y < 0.0f ? 0.0f : y;
        case 2: return y < 0.0f ? 0.0f : y > 6.0f ? 6.0f : y;
        case 3: {
            const float gate = y * (1.0f / 6.0f) + 0.5f;
            return y * (gate < 0.0f ? 0.0f : gate > 1.0f ? 1.0f : gate);
        }
        default: return y;
    }
}

// Stores an epilogue tile one float at a time: rows[p] holds pixel p's results for kLanes
// channels; channel j of pixel p goes to out[j * channel_stride + p * pixel_stride], plus the
// residuals at the same offset (BinaryConv2d v2's fused Add, v3's second Add and ReLUs).
template <int kLanes, int NP, typename Floats>
inline void store_tile_one_by_one(float* out, const Residuals& residuals, int64_t channel_stride, int64_t pixel_stride,
                                  const Floats (&rows)[NP], int pixels, int channels) {
    float tile[NP][kLanes];
    static_assert(sizeof(tile) == sizeof(rows), "Floats holds kLanes floats");
    std::memcpy(tile, rows, sizeof(tile));
    for (int k = 0; k < 2; ++k) {
        const float* r = residuals.tensor[k];
        if (r == nullptr) continue;
        const bool relu = residuals.relu[k];
        for (int j = 0; j < channels; ++j)
            for (int p = 0; p < pixels; ++p) tile[p][j] += rectified(r[j * channel_stride + p * pixel_stride], relu);
    }
    for (int j = 0; j < channels; ++j)
        for (int p = 0; p < pixels; ++p) out[j * channel_stride + p * pixel_stride] = activated(tile[p][j], residuals.activation);
}

// ---------------------------------------------------------------------------------------------
// ISA traits. Each provides:
//   Vec        the weights of kLanes output channels for one reduction step (one 64-bit word of
//              64 input channels per output channel), or for one of its kSubSteps sub-steps;
//   kSubSteps / load / differ / zero   the operands of the hot loop: a step is counted in
//              kSubSteps parts s (1, or AVX2's 8 bytes of the word); load(weights, s) loads part
//              s of a weight vector and differ(activation, weights, s) compares it with part s of
//              one pixel's packed activation word (at `activation`): their xor, whose popcount
//              counts the sign mismatches, or the mismatch counts themselves (AVX2's byte tables);
//   Acc, kGroup, add_popcounts, kStepsPerFlush         the counting: add_popcounts adds the
//              counts of kGroup differ() results (consecutive reduction steps of one pixel and
//              one channel vector) to an Acc, which may overflow after kStepsPerFlush steps (a
//              multiple of kGroup);
//   Total, zero_total, flush        exact totals per channel: flush(total, acc) adds an Acc;
//   kStepsPerFold, fold             totals that would overflow (AVX2's 16-bit ones) are widened
//              by fold(total) after every kStepsPerFold reduction steps (WholeWords: 1 and the
//              identity, which the compiler drops);
//   WeightElement, place_weight     the weight layout (kernel_api.h): one output channel's
//              weights of one step, placed by place_weight among the step's MB elements;
//   Floats / affine / store_columns                     the epilogue: kLanes float results of one
//              pixel, and their transposed store into NCHW (each channel's pixels contiguous);
//   PackWords / pack_zero / pack_channel / pack_store   the activation packing: pack_channel
//              adds the signs of one channel (0 .. 63 of a word) of 16 pixels, pack_store writes
//              the 16 pixels' words.
// ---------------------------------------------------------------------------------------------

// The loop reads each 64-bit word of 64 channels as it is, and counts the bits of an xor:
// a padding tap (zero words) counts its weights.
struct WholeWords {
    static constexpr int kSubSteps = 1;
    using WeightElement = uint64_t;
    static void place_weight(uint64_t* step, int channel, uint64_t word) { step[channel] = word; }
    // 64-bit totals (or sums of at most 31 x 8-step bytes folded at flush) need no widening.
    static constexpr int64_t kStepsPerFold = 1;
    template <typename Total>
    static Total fold(Total total) { return total; }
};

// Counting without a vector popcount instruction, for AVX-512BW without VPOPCNTDQ (Skylake-SP,
// Cascade Lake): Harley-Seal carry-save counting. The words of 8 consecutive steps go through a
// tree of 7 carry-save adders (3 words in, their bitwise sum and carry out; 2 vpternlogq each)
// that keeps running `ones`, `twos` and `fours` words and emits one `eights` word per group; only
// that word is popcounted (nibble table lookup, vpshufb), into byte counters folded into 64-bit
// lanes (vpsadbw) at flush. Per 8 words: 7 CSAs + 1 byte popcount, against 8 byte popcounts
// (each 2 table lookups, a shift, 2 ands, 2 adds) for a nibble table per word; the CSAs issue
// on every vector port, the lookups only on the shuffle port. `Ops` supplies Vec, zero, xor3,
// majority, byte_popcount, add_bytes and add_byte_sums (total + (per-lane byte sum << shift)).
// AVX2 counts by table lookup instead (its Isa below): with 16 ymm registers the Harley-Seal
// state (4 per accumulator) forces 2-accumulator blocks, and those measured slower than a nibble
// table per word on every ResNet layer (K = 9 .. 72 steps) on Zen 5 and below K = 72 on Zen 1.
template <typename Ops>
struct HarleySealCounting : WholeWords {
    using Vec = typename Ops::Vec;
    static constexpr int kGroup = 8;
    // `eights` counts <= 8 per byte per group: 31 groups stay below 256.
    static constexpr int64_t kStepsPerFlush = 31 * kGroup;
    struct Acc { Vec ones, twos, fours, eights; };
    static Acc zero_acc() { return {Ops::zero(), Ops::zero(), Ops::zero(), Ops::zero()}; }
    // sum + a + b, bitwise: the carries to `carry`, the sum bits stay in `sum`.
    static void csa(Vec& carry, Vec& sum, Vec a, Vec b) {
        carry = Ops::majority(sum, a, b);
        sum = Ops::xor3(sum, a, b);
    }
    static Acc add_popcounts(Acc acc, const Vec (&d)[kGroup]) {
        Vec twos_a, twos_b, fours_a, fours_b, eights;
        csa(twos_a, acc.ones, d[0], d[1]);
        csa(twos_b, acc.ones, d[2], d[3]);
        csa(fours_a, acc.twos, twos_a, twos_b);
        csa(twos_a, acc.ones, d[4], d[5]);
        csa(twos_b, acc.ones, d[6], d[7]);
        csa(fours_b, acc.twos, twos_a, twos_b);
        csa(eights, acc.fours, fours_a, fours_b);
        acc.eights = Ops::add_bytes(acc.eights, Ops::byte_popcount(eights));
        return acc;
    }
    using Total = Vec;
    static Total zero_total() { return Ops::zero(); }
    static Vec flush(Vec total, Acc acc) {
        // popcount = 8 * eights + 4 * fours + 2 * twos + ones, the last three <= 56 per byte.
        Vec low = Ops::byte_popcount(acc.fours);
        low = Ops::add_bytes(Ops::add_bytes(low, low), Ops::byte_popcount(acc.twos));
        low = Ops::add_bytes(Ops::add_bytes(low, low), Ops::byte_popcount(acc.ones));
        return Ops::add_byte_sums(Ops::add_byte_sums(total, low, 0), acc.eights, 3);
    }
};

#if defined(BINARIZE_ISA_AVX512) || defined(BINARIZE_ISA_AVX512BW)
// (maskz forms where GCC 12's plain intrinsic trips -Wmaybe-uninitialized, as in affine below.)
struct Avx512Words {
    using Vec = __m512i;
    static Vec zero() { return _mm512_setzero_si512(); }
    static Vec xor3(Vec a, Vec b, Vec c) { return _mm512_ternarylogic_epi64(a, b, c, 0x96); }
    static Vec majority(Vec a, Vec b, Vec c) { return _mm512_ternarylogic_epi64(a, b, c, 0xe8); }
    static Vec byte_popcount(Vec v) {
        const __m512i nibble_popcount = _mm512_maskz_broadcast_i32x4(0xffff, _mm_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4));
        const __m512i low_nibble = _mm512_set1_epi8(0x0f);
        const __m512i lo = _mm512_shuffle_epi8(nibble_popcount, _mm512_and_si512(v, low_nibble));
        const __m512i hi = _mm512_shuffle_epi8(nibble_popcount, _mm512_and_si512(_mm512_srli_epi16(v, 4), low_nibble));
        return _mm512_add_epi8(lo, hi);
    }
    static Vec add_bytes(Vec a, Vec b) { return _mm512_add_epi8(a, b); }
    static Vec add_byte_sums(Vec total, Vec bytes, int shift) {
        return _mm512_add_epi64(total, _mm512_maskz_slli_epi64(0xff, _mm512_sad_epu8(bytes, zero()), shift));
    }
};
#if defined(BINARIZE_ISA_AVX512)
struct Avx512Counting : WholeWords {  // vpopcntq counts straight into 64-bit lanes
    static constexpr int kGroup = 1;
    static constexpr int64_t kStepsPerFlush = INT64_MAX;
    using Acc = __m512i;
    static Acc zero_acc() { return _mm512_setzero_si512(); }
    static Acc add_popcounts(Acc acc, const __m512i (&d)[1]) { return _mm512_add_epi64(acc, _mm512_popcnt_epi64(d[0])); }
    using Total = __m512i;
    static Total zero_total() { return _mm512_setzero_si512(); }
    static __m512i flush(__m512i total, Acc acc) { return _mm512_add_epi64(total, acc); }
};
#else
using Avx512Counting = HarleySealCounting<Avx512Words>;
#endif

struct Isa : Avx512Words, Avx512Counting {
#if defined(BINARIZE_ISA_AVX512)
    // 4 vectors x 8 lanes = 32 output channels, times 6 pixels = 24 zmm accumulators
    // + 4 weight vectors + 1 broadcast: 29 of the 32 zmm registers.
    static constexpr int kLanes = 8, kVectors = 4, kPixels = 6;
#else
    // Harley-Seal state is 4 zmm per accumulator: 2 vectors x 8 lanes = 16 channels, times
    // 2 pixels = 16 zmm, + the group's 8 words, table, nibble mask and CSA temporaries (3 pixels
    // spill heavily). llvm-mca's Skylake-SP model puts this loop at 1.8 cycles per word against
    // 3.7 for a nibble table per word: there vpshufb issues on one port.
    // (On Zen 5, where this path only runs when forced, the table is faster up to K = 36.)
    static constexpr int kLanes = 8, kVectors = 2, kPixels = 2;
#endif
    using Vec = __m512i;
    static Vec load(const uint64_t* p, int) { return _mm512_loadu_si512(p); }
    static Vec differ(const uint64_t* activation, Vec weights, int) {
        return _mm512_xor_si512(_mm512_set1_epi64(static_cast<long long>(*activation)), weights);
    }

    // Epilogue on 8 channels of one pixel. multiplier * d + bias is written with vector
    // operators, like the scalar formula, so the compiler applies the same contraction (fma here).
    using Floats = __m256;
    static Floats affine(Vec total, const int32_t* base, const float* multiplier, const float* bias) {
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
    static void store_columns(float* out, const Residuals& residuals, int64_t channel_stride, const Floats (&rows)[NP],
                              int pixels, int channels) {
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
            __m512 both = _mm512_permutex2var_ps(p0123, _mm512_mask_add_epi32(second, 0x3030, second, channel), p45);
            for (int k = 0; k < 2; ++k) {  // the same lanes of channels j and j + 1 of each residual
                const float* residual = residuals.tensor[k];
                if (residual == nullptr) continue;
                const __mmask8 lanes = static_cast<__mmask8>(pixel_lanes);
                const __m256 r0 = _mm256_maskz_loadu_ps(lanes, residual + j * channel_stride);
                const __m256 r1 = j + 1 < channels ? _mm256_maskz_loadu_ps(lanes, residual + (j + 1) * channel_stride)
                                                   : _mm256_setzero_ps();
                __m512 r = _mm512_insertf32x8(_mm512_castps256_ps512(r0), r1, 1);
                // max(0, r) returns r when r is NaN or -0 (its second operand): rectified()'s r < 0 ? 0 : r.
                // (The maskz form, all lanes on: GCC 12's plain _mm512_max_ps trips -Wmaybe-uninitialized.)
                if (residuals.relu[k]) r = _mm512_maskz_max_ps(0xffff, _mm512_setzero_ps(), r);
                both = _mm512_add_ps(both, r);
            }
            both = activated(both, residuals.activation);
            _mm512_mask_storeu_ps(out + j * channel_stride, pixel_lanes, both);
            if (j + 1 < channels)
                _mm256_mask_storeu_ps(out + (j + 1) * channel_stride, static_cast<__mmask8>(pixel_lanes), _mm512_extractf32x8_ps(both, 1));
        }
    }

    // activated() (above) on 16 floats: max(0, y) and min(6, y) return y when it is NaN (their
    // second operand), as y < 0 ? 0 : y does. (maskz forms, all lanes on: see store_columns.)
    static __m512 activated(__m512 y, int activation) {
        const __m512 zero = _mm512_setzero_ps();
        switch (activation) {
            case 1: return _mm512_maskz_max_ps(0xffff, zero, y);
            case 2: return _mm512_maskz_min_ps(0xffff, _mm512_set1_ps(6.0f), _mm512_maskz_max_ps(0xffff, zero, y));
            case 3: {
                const __m512 gate = y * _mm512_set1_ps(1.0f / 6.0f) + _mm512_set1_ps(0.5f);
                return y * _mm512_maskz_min_ps(0xffff, _mm512_set1_ps(1.0f), _mm512_maskz_max_ps(0xffff, zero, gate));
            }
            default: return y;
        }
    }

    // Packing: 16 pixels (one cache line of a channel plane) per compare; their words in two
    // zmm; a channel sets its bit where !(x >= 0). Masked-off lanes load 0.0, i.e. no bit.
    struct PackWords { __m512i lo, hi; };
    static PackWords pack_zero() { return {_mm512_setzero_si512(), _mm512_setzero_si512()}; }
    static void pack_channel(PackWords& words, const float* x16, int pixels, int channel, float threshold) {
        const uint64_t bit = uint64_t{1} << channel;
        const __mmask16 valid = static_cast<__mmask16>(pixels >= 16 ? 0xffff : (1u << pixels) - 1);
        const __m512 x = _mm512_sub_ps(_mm512_maskz_loadu_ps(valid, x16), _mm512_set1_ps(threshold));
        // (Lanes past `pixels` may set bits; pack_pixels stores only the first `pixels` words.)
        const __mmask16 negative = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_NGE_UQ);
        const __m512i bits = _mm512_set1_epi64(static_cast<long long>(bit));
        words.lo = _mm512_mask_or_epi64(words.lo, static_cast<__mmask8>(negative), words.lo, bits);
        words.hi = _mm512_mask_or_epi64(words.hi, static_cast<__mmask8>(negative >> 8), words.hi, bits);
    }
    static void pack_store(uint64_t* out16, PackWords words) {
        _mm512_storeu_si512(out16, words.lo);
        _mm512_storeu_si512(out16 + 8, words.hi);
    }
};
#elif defined(BINARIZE_ISA_AVX2)
// The count tables of a byte b of 8 channels' signs: popcount((b & 15) ^ x), then
// popcount((b >> 4) ^ x), for x = 0 .. 15 (kByteTables.bytes[b]; 8 KiB, see the Isa below).
struct ByteTables { alignas(32) uint8_t bytes[256][32]; };
constexpr ByteTables byte_tables() {
    ByteTables t{};
    for (int b = 0; b < 256; ++b)
        for (int x = 0; x < 32; ++x) {
            const int d = ((x < 16 ? b : b >> 4) & 15) ^ (x & 15);
            t.bytes[b][x] = static_cast<uint8_t>((d & 1) + (d >> 1 & 1) + (d >> 2 & 1) + (d >> 3 & 1));
        }
    return t;
}
constexpr ByteTables kByteTables = byte_tables();

// Counting by byte tables: AVX2 has no vector popcount, and its table instruction (vpshufb) maps
// 4 bits to a byte. A reduction step is one 64-bit word of 64 input channels, counted in 8
// sub-steps of one byte b (8 channels) each: kByteTables.bytes[b], loaded from the 8 KiB constant
// table, holds popcount((b & 15) ^ x) in its low 128-bit lane and popcount((b >> 4) ^ x) in its
// high lane, and one vpshufb with a weight vector that holds 16 output channels' low nibbles of
// byte b in its low lane and their high nibbles in its high lane gives those channels' mismatch
// counts over the byte's 8 inputs (low 4 inputs in one lane, high 4 in the other), added into
// byte counters. The packed activations stay the plain sign words (8 bytes per 64 channels and
// pixel, the layout of every path): the table is chosen by the byte's value, not written by the
// packing. It replaced (2026-12-07) count tables that the packing wrote per nibble of the
// activations (256 bytes per 64 channels and pixel) and, in 1x1 layers, nibble parts whose xor
// with the weights was counted. On AMD Zen 3 the ResNet-18 3x3 layers took the same time within
// 4 %, 224 x 224 and 448 x 448 maps 15-21 % less, whole models 0.92-1.07x (ResNet-50 gained most,
// MobileNetV3-small's small 1x1 layers lost), though this step alone is slower (151 against 194
// binary MACs per cycle: 4 more loads per sub-step), so the layers are not bound by the step
// there (benchmarks/RESULTS.md, "AVX2 counting by byte tables").
struct Isa {
    using Vec = __m256i;
    static Vec zero() { return _mm256_setzero_si256(); }
    // The register block: 2 vectors x 16 channels, times 4 pixels = 8 byte counters, + 2 weight
    // vectors and a table: 11-12 of the 16 ymm registers. Per sub-step 2 weight loads, 4 byte
    // loads, 4 table loads and 8 lookups.
    static constexpr int kLanes = 16, kVectors = 2, kPixels = 4;
    static constexpr int kSubSteps = 8;
    // One output channel's weights of one step: 16 nibbles, which block_weights spreads over the
    // step's 8 rows of 32 bytes per 16 channels (place_weight).
    struct WeightElement { uint8_t nibbles[16]; };
    static void place_weight(WeightElement* step, int channel, uint64_t word) {
        uint8_t* rows = step[channel / kLanes * kLanes].nibbles;  // the 16 channels' 256 bytes
        const int lane = channel % kLanes;
        for (int s = 0; s < 8; ++s) {
            rows[32 * s + lane] = static_cast<uint8_t>((word >> (8 * s)) & 15);
            rows[32 * s + 16 + lane] = static_cast<uint8_t>((word >> (8 * s + 4)) & 15);
        }
    }

    static Vec load(const WeightElement* p, int s) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p->nibbles + 32 * s)); }
    static Vec differ(const uint64_t* activation, Vec weights, int s) {
        const uint8_t byte = reinterpret_cast<const uint8_t*>(activation)[s];
        return _mm256_shuffle_epi8(_mm256_load_si256(reinterpret_cast<const __m256i*>(kByteTables.bytes[byte])), weights);
    }

    static constexpr int kGroup = 1;
    static constexpr int64_t kStepsPerFlush = 7;  // <= 32 per byte per step: 7 * 32 < 256
    using Acc = Vec;
    static Acc zero_acc() { return zero(); }
    static Acc add_popcounts(Acc acc, const Vec (&d)[1]) { return add_bytes(acc, d[0]); }  // d: the counts
    // Exact totals of 16 channels: 16-bit counts (`low`: channels 0-7, `high`: 8-15, the order
    // of vpunpck{l,h}bw; the low lane counts the low nibbles' inputs, the high lane the high
    // ones'), which 256 flushes of <= 224 cannot overflow, folded into 32-bit `wide` counts
    // (channels 8i .. 8i + 7 in wide[i]) every 256 flushes, i.e. only in a reduction of more
    // than 1,792 steps (114,688 sign products): `folded` says whether `wide` holds counts, so
    // that the common tile neither zeroes nor reads it. popcount_block tests for the fold once
    // per flush of the block (a test in each accumulator's flush was 2 % of 3x3 64@56's
    // instructions).
    static constexpr int64_t kStepsPerFold = 256 * kStepsPerFlush;
    struct Total {
        __m256i low, high, wide[2];
        bool folded;
    };
    static Total zero_total() {
        Total t;
        t.low = t.high = zero();
        t.folded = false;
        return t;
    }
    static Total flush(Total t, Acc acc) {
        t.low = _mm256_add_epi16(t.low, _mm256_unpacklo_epi8(acc, zero()));
        t.high = _mm256_add_epi16(t.high, _mm256_unpackhi_epi8(acc, zero()));
        return t;
    }
    static Total fold(Total t) {
        for (int i = 0; i < 2; ++i) t.wide[i] = counts(t, i);
        t.low = t.high = zero();
        t.folded = true;
        return t;
    }
    // Channels 8i .. 8i + 7 of a total, as 32-bit counts: the sum of both lanes.
    static __m256i counts(const Total& t, int i) {
        const __m256i& half = i == 0 ? t.low : t.high;
        const __m256i count = _mm256_add_epi32(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(half)),
                                               _mm256_cvtepu16_epi32(_mm256_extracti128_si256(half, 1)));
        return t.folded ? _mm256_add_epi32(t.wide[i], count) : count;
    }

    // Epilogue on 16 channels of one pixel, 8 at a time (the counts are < 2^31).
    struct Floats { __m256 eight[2]; };
    static Floats affine(const Total& total, const int32_t* base, const float* multiplier, const float* bias) {
        Floats y;
        for (int i = 0; i < 2; ++i) {
            const __m256i d = _mm256_sub_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(base + 8 * i)),
                                               _mm256_slli_epi32(counts(total, i), 1));
            y.eight[i] = _mm256_loadu_ps(multiplier + 8 * i) * _mm256_cvtepi32_ps(d) + _mm256_loadu_ps(bias + 8 * i);
        }
        return y;
    }
    // 4 channels at a time (store_quad).
    template <int NP>
    static void store_columns(float* out, const Residuals& residuals, int64_t channel_stride, const Floats (&rows)[NP],
                              int pixels, int channels) {
        static_assert(NP <= 4, "one 4 x 4 transpose per 4 channels");
#pragma GCC unroll 4
        for (int q = 0; q < 4; ++q) {
            if (4 * q >= channels) break;
            __m128 c[4];
            for (int p = 0; p < 4; ++p) {
                const __m256 eight = rows[p < NP ? p : 0].eight[q / 2];
                c[p] = q % 2 == 0 ? _mm256_castps256_ps128(eight) : _mm256_extractf128_ps(eight, 1);
            }
            store_quad(out + 4 * q * channel_stride, residuals_at(residuals, 4 * q * channel_stride), channel_stride, c[0],
                       c[1], c[2], c[3], pixels, channels - 4 * q < 4 ? channels - 4 * q : 4);
        }
    }

    // a + b per byte, added into a's register by an asm vpaddb: from the plain intrinsic GCC 12
    // writes most of the loop's accumulator sums to a temporary and copies them back (with the
    // table on whole words: 5 vmovdqa per step of the 4 x 2 block, and 3 accumulators spilled to
    // the stack), and on AMD Zen 1 every 256-bit copy issues as two vector operations
    // (benchmarks/RESULTS.md, "AVX2 accumulators added in place").
    static Vec add_bytes(Vec a, Vec b) {
        asm("vpaddb %1, %0, %0" : "+x"(a) : "x"(b));
        return a;
    }
    // The first n (1 .. 4) floats of a row, from and to memory, with plain moves: 8 bytes (movsd),
    // 4 bytes (movss) or 16. vmaskmovps would do it in one instruction, but on AMD Zen 1 its
    // store is microcoded and its load several times slower than a plain one: with them the
    // fused residual Add cost more than ONNX Runtime's own Add pass
    // (benchmarks/RESULTS.md, "AVX2 epilogue without masked moves").
    static __m128 load_first(const float* p, int n) {
        if (n == 4) return _mm_loadu_ps(p);
        if (n == 1) return _mm_load_ss(p);
        const __m128 two = _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(p)));
        return n == 2 ? two : _mm_movelh_ps(two, _mm_load_ss(p + 2));
    }
    static void store_first(float* p, __m128 y, int n) {
        if (n == 4) return _mm_storeu_ps(p, y);
        if (n == 1) return _mm_store_ss(p, y);
        _mm_store_sd(reinterpret_cast<double*>(p), _mm_castps_pd(y));
        if (n == 3) _mm_store_ss(p + 2, _mm_movehl_ps(y, y));
    }
    // Transpose in registers: the (up to 4) pixel rows of 4 channels, padded to 4, become one xmm
    // per channel holding its pixels, stored as one run; each residual is read as one run. Storing
    // and adding one float at a time took more instructions (callgrind, ResNet-18) than ONNX
    // Runtime's own Add and Relu passes that the fused residuals replace.
    static void store_quad(float* out, const Residuals& residuals, int64_t channel_stride, __m128 c0, __m128 c1,
                           __m128 c2, __m128 c3, int pixels, int channels) {
        _MM_TRANSPOSE4_PS(c0, c1, c2, c3);  // c_j: channel j's pixels 0-3 (lanes past `pixels` unused)
        const __m128 columns[4] = {c0, c1, c2, c3};
        for (int j = 0; j < channels; ++j) {
            __m128 y = columns[j];
            for (int k = 0; k < 2; ++k) {
                const float* residual = residuals.tensor[k];
                if (residual == nullptr) continue;
                __m128 r = load_first(residual + j * channel_stride, pixels);
                // max(0, r) returns r when r is NaN or -0 (its second operand): rectified()'s r < 0 ? 0 : r.
                if (residuals.relu[k]) r = _mm_max_ps(_mm_setzero_ps(), r);
                y = _mm_add_ps(y, r);
            }
            store_first(out + j * channel_stride, activated(y, residuals.activation), pixels);
        }
    }

    // activated() (above) on 4 floats: max(0, y) and min(6, y) return y when it is NaN (their
    // second operand), as y < 0 ? 0 : y does.
    static __m128 activated(__m128 y, int activation) {
        const __m128 zero = _mm_setzero_ps();
        switch (activation) {
            case 1: return _mm_max_ps(zero, y);
            case 2: return _mm_min_ps(_mm_set1_ps(6.0f), _mm_max_ps(zero, y));
            case 3: {
                const __m128 gate = y * _mm_set1_ps(1.0f / 6.0f) + _mm_set1_ps(0.5f);
                return y * _mm_min_ps(_mm_set1_ps(1.0f), _mm_max_ps(zero, gate));
            }
            default: return y;
        }
    }

    // Packing: each channel's 16 sign bits (bit p: pixel p) from two compares and vmovmskps, kept
    // as 16-bit masks; pack_store transposes the 64 x 16 bit matrix into the 16 pixels' words.
    // (Widening each compare's lanes to 64 bits and OR-ing the channel's bit into 16 words took
    // 1.6x the instructions: 576 K at 3x3 64@56 against 367 K; benchmarks/RESULTS.md, "AVX2
    // packing by bit transpose".)
    struct PackWords { alignas(32) uint16_t masks[64]; };  // masks[c]: channel c's 16 pixels
    static PackWords pack_zero() {
        PackWords words;
        for (int i = 0; i < 4; ++i) _mm256_store_si256(reinterpret_cast<__m256i*>(words.masks + 16 * i), zero());
        return words;
    }
    static void pack_channel(PackWords& words, const float* x16, int pixels, int channel, float threshold) {
        int mask = 0;
        for (int half = 0; half < 2; ++half) {
            // A whole half is a plain load (vmaskmovps is slow on AMD Zen 1 even with every lane
            // on); in a short last group, lanes past `pixels` are not loaded (vmaskmovps does not
            // fault there) and whatever bits they get, pack_pixels stores only the first `pixels` words.
            const int valid_pixels = pixels - 8 * half;
            const __m256 loaded = valid_pixels >= 8
                ? _mm256_loadu_ps(x16 + 8 * half)
                : _mm256_maskload_ps(x16 + 8 * half, _mm256_cmpgt_epi32(_mm256_set1_epi32(valid_pixels), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
            const __m256 x = _mm256_sub_ps(loaded, _mm256_set1_ps(threshold));
            mask |= _mm256_movemask_ps(_mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_NGE_UQ)) << (8 * half);
        }
        words.masks[channel] = static_cast<uint16_t>(mask);
    }
    // The transpose: the masks' low bytes (pixels 0-7) of channels 0-31 in one ymm, of 32-63 in
    // another, and the high bytes (pixels 8-15) likewise; shifting every 16-bit lane left by 7 - p
    // brings bit p of each byte to its top bit, and vpmovmskb gathers those: 32 channels of pixel p.
    static void pack_store(uint64_t* out16, const PackWords& words) {
        const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                               0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
        __m256i low[2], high[2];  // [i]: channels 32i .. 32i + 31, one byte each
        for (int i = 0; i < 2; ++i) {
            __m256i v[2];
            for (int k = 0; k < 2; ++k) {
                // 16 channels' masks -> their low bytes in 64-bit lanes 0-1, high bytes in 2-3
                const __m256i masks = _mm256_load_si256(reinterpret_cast<const __m256i*>(words.masks + 32 * i + 16 * k));
                v[k] = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(masks, split), 0xd8);
            }
            low[i] = _mm256_permute2x128_si256(v[0], v[1], 0x20);
            high[i] = _mm256_permute2x128_si256(v[0], v[1], 0x31);
        }
#pragma GCC unroll 16
        for (int p = 0; p < 16; ++p) {
            const __m256i (&bytes)[2] = p < 8 ? low : high;
            const int shift = 7 - p % 8;
            const uint32_t first = static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_slli_epi16(bytes[0], shift)));
            const uint32_t second = static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_slli_epi16(bytes[1], shift)));
            out16[p] = first | static_cast<uint64_t>(second) << 32;
        }
    }
};
#elif defined(BINARIZE_ISA_NEON)
#include "neon_isa.h"
#else
struct Isa : WholeWords {
    // Portable fallback: one channel per "vector"; 4 channels x 4 pixels of scalar accumulators.
    static constexpr int kLanes = 1, kVectors = 4, kPixels = 4;
    using Vec = uint64_t;
    static Vec load(const uint64_t* p, int) { return *p; }
    static Vec differ(const uint64_t* activation, Vec weights, int) { return *activation ^ weights; }
    static Vec zero() { return 0; }
    static constexpr int kGroup = 1;
    static constexpr int64_t kStepsPerFlush = INT64_MAX;
    using Acc = uint64_t;
    static Acc zero_acc() { return 0; }
    static Acc add_popcounts(Acc acc, const Vec (&d)[1]) { return acc + static_cast<uint64_t>(__builtin_popcountll(d[0])); }
    using Total = uint64_t;
    static Total zero_total() { return 0; }
    static Vec flush(Vec total, Acc acc) { return total + acc; }

    using Floats = float;
    static Floats affine(Vec total, const int32_t* base, const float* multiplier, const float* bias) {
        return *multiplier * static_cast<float>(*base - 2 * static_cast<int32_t>(total)) + *bias;
    }
    template <int NP>
    static void store_columns(float* out, const Residuals& residuals, int64_t channel_stride, const Floats (&rows)[NP],
                              int pixels, int channels) {
        store_tile_one_by_one<kLanes>(out, residuals, channel_stride, 1, rows, pixels, channels);
    }

    struct PackWords { uint64_t w[16]; };
    static PackWords pack_zero() { return {}; }
    static void pack_channel(PackWords& words, const float* x16, int pixels, int channel, float threshold) {
        const uint64_t bit = uint64_t{1} << channel;
        for (int p = 0; p < pixels; ++p) words.w[p] |= !(x16[p] - threshold >= 0.0f) ? bit : 0;
    }
    static void pack_store(uint64_t* out16, PackWords words) {
        for (int p = 0; p < 16; ++p) out16[p] = words.w[p];
    }
};
#endif

constexpr int kBlockChannels = Isa::kLanes * Isa::kVectors;  // MB
constexpr int kBlockPixels = Isa::kPixels;                   // P
using WeightElement = typename Isa::WeightElement;

// ---------------------------------------------------------------------------------------------
// Activation packing: bit = !(x - threshold[c] >= 0) (threshold 0 without one: x - 0 is x for
// every float, -0 and NaN included), so sign(0) = +1 and NaN binarizes to -1 as in the
// reference. One pass over the float input writes the padded NHWC word layout described above
// popcount_block. The input is walked as one flat sequence of pixels (row-major, so a group
// may span rows and narrow 7- or 14-pixel rows still fill whole vectors); for a convolution
// the 16 pixels of a group are contiguous floats of each channel plane, so each channel costs
// a vector compare or two (Isa::pack_channel), and Isa::pack_store writes the group's words.
// Strided pixels (BinaryLinear rows) take the plain per-float loop.
// ---------------------------------------------------------------------------------------------
constexpr int kPackGroup = 16;

void pack_group_any_stride(const PackArgs& a, const float* src, int pixels, int64_t cw, uint64_t* words) {
    const int64_t channels = min_i64(64, a.channels - cw * 64);
    for (int p = 0; p < pixels; ++p) {
        uint64_t word = 0;
        const float* x = src + p * a.pixel_stride + cw * 64 * a.channel_stride;
        const float* t = a.threshold == nullptr ? nullptr : a.threshold + cw * 64;
        for (int64_t c = 0; c < channels; ++c)
            word |= !(x[c * a.channel_stride] - (t == nullptr ? 0.0f : t[c]) >= 0.0f) ? uint64_t{1} << c : 0;
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
                    const float threshold = a.threshold == nullptr ? 0.0f : a.threshold[cw * 64 + c];
                    Isa::pack_channel(packed, src + (cw * 64 + c) * a.channel_stride, pixels, static_cast<int>(c),
                                      threshold);
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
// Layouts (64-bit words, bit b of a word = channel 64*word + b, bit value 1 = sign -1; a word is
// one reduction step):
//   activations  [Hp][Wp][CW]       padded NHWC image, padding words are 0;
//   weights      [M/MB][K][MB]      K = KH*KW*CW reduction steps, k = (kh*KW + kw)*CW + cw;
//                                   the MB elements (Isa::WeightElement) of one step are the MB
//                                   output channels of the block, so one vector load feeds
//                                   kLanes channels (AVX2: per sub-step, Isa::place_weight).
// A reduction step k of output pixel q reads the activation words at
//   pixel_offsets[q] + step_offsets[k],
// i.e. the receptive field is walked through a precomputed offset table (an indirect
// convolution): no im2col buffer, any stride/dilation, one code path.
//
// Register blocking: a tile is NP pixels x MB channels, whose NP x MB popcount accumulators stay
// in registers for the whole reduction; per step (or sub-step) we load kVectors weight vectors,
// compare each pixel's activation with them (Isa::differ: a broadcast word's xor, or AVX2's table
// lookup) and add the NP * kVectors counts (Isa::add_popcounts, kGroup steps at a time).
// Everything is integer; the float transform happens once per output in the epilogue, a tile at
// a time. NP is P, or P - 1 for the tiles that let the pixel count be tiled
// exactly (ConvArgs::full_blocks).
//
// Padding: the padded buffer makes every tap readable, but a padded tap has to contribute 0,
// not +/-1 per channel. The epilogue computes D = pattern_base[pattern(q)][m] - 2 * total, where
// pattern_base holds (valid taps * C) for each distinct padding pattern (precomputed once per
// input size), + 2 * (sum of popcount(weights) over the taps that fall into padding), because a
// zero word there counts its weights (an xor with zero; AVX2's table of a zero byte). Interior
// pixels share one pattern with no correction, so border handling costs nothing inside this loop.
// ---------------------------------------------------------------------------------------------
// Adds the popcounts of reduction steps k .. k + kValid - 1 to every accumulator. kValid <
// kGroup is the tail of a reduction that is not a multiple of kGroup: the missing words are
// compile-time zeros, which the compiler folds out of the carry-save tree.
template <int NP, int NV, int kValid>
inline void add_group(typename Isa::Acc (&acc)[NP][NV], const uint64_t* const (&fields)[NP],
                      const int64_t* step_offsets, const WeightElement* weights, int64_t k) {
#pragma GCC unroll 8
    for (int s = 0; s < Isa::kSubSteps; ++s)
#pragma GCC unroll 8
        for (int p = 0; p < NP; ++p)
#pragma GCC unroll 8
            for (int v = 0; v < NV; ++v) {
                typename Isa::Vec d[Isa::kGroup];
#pragma GCC unroll 8
                for (int g = 0; g < Isa::kGroup; ++g)
                    d[g] = g < kValid ? Isa::differ(fields[p] + step_offsets[k + g],
                                                    Isa::load(weights + (k + g) * kBlockChannels + v * Isa::kLanes, s), s)
                                      : Isa::zero();
                acc[p][v] = Isa::add_popcounts(acc[p][v], d);
            }
}

// The tail group of `valid` (1 .. kValid) steps.
template <int NP, int NV, int kValid>
inline void add_tail(typename Isa::Acc (&acc)[NP][NV], const uint64_t* const (&fields)[NP],
                     const int64_t* step_offsets, const WeightElement* weights, int64_t k, int64_t valid) {
    if constexpr (kValid > 0) {
        if (valid == kValid)
            add_group<NP, NV, kValid>(acc, fields, step_offsets, weights, k);
        else
            add_tail<NP, NV, kValid - 1>(acc, fields, step_offsets, weights, k, valid);
    }
}

template <int NP, int NV>
inline void popcount_block(const uint64_t* image, const int64_t* pixel_offsets, const int64_t* step_offsets,
                           int64_t steps, const WeightElement* weights, typename Isa::Total (*total)[NV]) {
    const uint64_t* fields[NP];  // each pixel's receptive field starts here
#pragma GCC unroll 8
    for (int p = 0; p < NP; ++p) fields[p] = image + pixel_offsets[p];

    // Every reduction has a step (K >= 1), and the first flush starts the totals: no zeros stored and added.
    int64_t k0 = 0;
    do {
        const int64_t k1 = k0 + min_i64(Isa::kStepsPerFlush, steps - k0);
        typename Isa::Acc acc[NP][NV];
#pragma GCC unroll 8
        for (int p = 0; p < NP; ++p)
#pragma GCC unroll 8
            for (int v = 0; v < NV; ++v) acc[p][v] = Isa::zero_acc();
        int64_t k = k0;
        for (; k + Isa::kGroup <= k1; k += Isa::kGroup)
            add_group<NP, NV, Isa::kGroup>(acc, fields, step_offsets, weights, k);
        add_tail<NP, NV, Isa::kGroup - 1>(acc, fields, step_offsets, weights, k, k1 - k);
#pragma GCC unroll 8
        for (int p = 0; p < NP; ++p)
#pragma GCC unroll 8
            for (int v = 0; v < NV; ++v)
                total[p][v] = Isa::flush(k0 == 0 ? Isa::zero_total() : total[p][v], acc[p][v]);
        if (k1 % Isa::kStepsPerFold == 0)
#pragma GCC unroll 8
            for (int p = 0; p < NP; ++p)
#pragma GCC unroll 8
                for (int v = 0; v < NV; ++v) total[p][v] = Isa::fold(total[p][v]);
        k0 = k1;
    } while (k0 < steps);
}

// One tile: `pixels` (<= NP) output pixels from q0 on, channels m0 .. m0 + NV * kLanes - 1 (NV
// vectors of the block's kVectors), with the first kResiduals residual slots.
template <int NP, int NV, int kResiduals, bool kActivated>
void conv_block(const ConvArgs& a, const uint64_t* image, const WeightElement* weights, int64_t m0, int64_t q0, int pixels,
                float* out_image, const Residuals& residual_channels) {
    // A partial block (only when the pixel count cannot be tiled exactly) repeats its last
    // pixel so the loop never changes shape.
    int64_t offsets[NP];
    const int32_t* bases[NP];
    for (int p = 0; p < NP; ++p) {
        const int64_t q = q0 + (p < pixels ? p : pixels - 1);
        offsets[p] = a.pixel_offsets[q];
        bases[p] = a.pattern_base + a.pixel_pattern[q] * a.out_channels_padded + m0;
    }
    typename Isa::Total total[NP][NV];
    popcount_block<NP, NV>(image, offsets, a.step_offsets, a.reduction_steps, weights, total);

    // Epilogue: exact integer D (|D| <= KH*KW*C < 2^31, checked when the kernel is created),
    // then the fused per-channel transform in float, vectorized over the channels of each
    // vector (multiplier and bias are padded to a multiple of MB) ...
    const int64_t tile_offset = q0 * a.output_pixel_stride + m0 * a.output_channel_stride;
    float* out = out_image + tile_offset;
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
        const int channels = static_cast<int>(min_i64(Isa::kLanes, a.out_channels - m0 - v * Isa::kLanes));
        if (channels <= 0) break;
        typename Isa::Floats rows[NP];
#pragma GCC unroll 8
        for (int p = 0; p < NP; ++p)
            rows[p] = Isa::affine(total[p][v], bases[p] + v * Isa::kLanes, a.multiplier + m0 + v * Isa::kLanes,
                                  a.bias + m0 + v * Isa::kLanes);
        // ... then stored: for NCHW (pixel stride 1) each channel's pixels are one contiguous run;
        // BinaryLinear's [rows][M] output (channel stride 1) is stored one float at a time.
        // The residuals (v2, v3; v4 may tile the first, residuals_of_channels) are added as the tile is stored.
        const int64_t vector_offset = v * Isa::kLanes * a.output_channel_stride;
        float* out_v = out + vector_offset;
        const Residuals residual_v =
            first_residuals<kResiduals, kActivated>(residuals_at(residual_channels, q0 * a.output_pixel_stride + vector_offset));
        // A whole tile (NP pixels, kLanes channels: all but those of a partial last pixel block or
        // past channel M) passes its sizes as constants, which GCC folds into the inlined store:
        // 3x3 64->64@56 took 8 % less time (benchmarks/RESULTS.md, "AVX2 epilogue with constant sizes").
        if (a.output_pixel_stride == 1 && pixels == NP && channels == Isa::kLanes)
            Isa::store_columns(out_v, residual_v, a.output_channel_stride, rows, NP, Isa::kLanes);
        else if (a.output_pixel_stride == 1)
            Isa::store_columns(out_v, residual_v, a.output_channel_stride, rows, pixels, channels);
        else
            store_tile_one_by_one<Isa::kLanes>(out_v, residual_v, a.output_channel_stride, a.output_pixel_stride, rows,
                                               pixels, channels);
    }
}

template <int NV, int kResiduals, bool kActivated>
void conv_blocks(const ConvArgs& a, int64_t image, int64_t channel_block, int64_t block_begin, int64_t block_end) {
    const uint64_t* packed_image = a.packed_input + image * a.input_image_words;
    const WeightElement* weights = static_cast<const WeightElement*>(a.packed_weights) + channel_block * a.reduction_steps * kBlockChannels;
    const int64_t m0 = channel_block * kBlockChannels;
    float* out_image = a.output + image * a.output_image_stride;
    const Residuals residual_channels = residuals_of_channels(a, image, m0);
    for (int64_t b = block_begin; b < block_end; ++b) {
        const bool full = b < a.full_blocks;
        const int64_t q0 = b * kBlockPixels - (full ? 0 : b - a.full_blocks);
        const int pixels = static_cast<int>(min_i64(full ? kBlockPixels : kBlockPixels - 1, a.output_pixels - q0));
        if (full)
            conv_block<kBlockPixels, NV, kResiduals, kActivated>(a, packed_image, weights, m0, q0, pixels, out_image, residual_channels);
        else
            conv_block<kBlockPixels - 1, NV, kResiduals, kActivated>(a, packed_image, weights, m0, q0, pixels, out_image, residual_channels);
    }
}

// A last channel block with at most half of its channels below M (M = 40 or 48 with 32-channel
// blocks) computes only the vectors of those: half the loop for the same outputs.
template <int kResiduals, bool kActivated>
void conv_blocks(const ConvArgs& a, int64_t image, int64_t channel_block, int64_t block_begin, int64_t block_end) {
    constexpr int kHalf = Isa::kVectors / 2;
    if (Isa::kVectors % 2 == 0 && a.out_channels - channel_block * kBlockChannels <= kHalf * Isa::kLanes)
        return conv_blocks<kHalf, kResiduals, kActivated>(a, image, channel_block, block_begin, block_end);
    conv_blocks<Isa::kVectors, kResiduals, kActivated>(a, image, channel_block, block_begin, block_end);
}

// The epilogue specialised on the residual slots in use and on whether there is an activation:
// a layer with neither stores without testing for them (a test of the activation per stored
// channel cost 3x3 64@56 3.6 % more convolution instructions; the specialisation makes the
// library's code 1.5x larger; benchmarks/RESULTS.md, "AVX2 packing by bit transpose").
template <bool kActivated>
void conv_tile_activated(const ConvArgs& a, int64_t image, int64_t channel_block, int64_t block_begin, int64_t block_end) {
    switch (a.residuals.slots()) {
        case 0: return conv_blocks<0, kActivated>(a, image, channel_block, block_begin, block_end);
        case 1: return conv_blocks<1, kActivated>(a, image, channel_block, block_begin, block_end);
        default: return conv_blocks<2, kActivated>(a, image, channel_block, block_begin, block_end);
    }
}

void conv_tile(const ConvArgs& a, int64_t image, int64_t channel_block, int64_t block_begin, int64_t block_end) {
    if (a.residuals.activation != 0) return conv_tile_activated<true>(a, image, channel_block, block_begin, block_end);
    conv_tile_activated<false>(a, image, channel_block, block_begin, block_end);
}

// The weights' [M_padded / MB][K][MB] layout (kernel_api.h) from the ONNX layout [M][KH][KW][CW].
void block_weights(const uint64_t* words, int64_t out_channels, int64_t channel_words, void* blocked) {
    auto* out = static_cast<WeightElement*>(blocked);
    for (int64_t m = 0; m < out_channels; ++m)
        for (int64_t k = 0; k < channel_words; ++k)
            Isa::place_weight(out + ((m / kBlockChannels) * channel_words + k) * kBlockChannels,
                              static_cast<int>(m % kBlockChannels), words[m * channel_words + k]);
}

}  // namespace

extern const IsaKernels kernels;
const IsaKernels kernels = {BINARIZE_ISA_NAME, kBlockChannels, kBlockPixels, sizeof(WeightElement), block_weights,
                            pack_pixels, conv_tile};

}  // namespace BINARIZE_ISA_NAMESPACE
}  // namespace binarize
