// NEON (AArch64 Advanced SIMD) traits for the shared binary convolution loop of isa_kernels.cpp.
//
// Included by isa_kernels.cpp inside its per-ISA namespace when it is compiled with
// BINARIZE_ISA_NEON (CMake does that on aarch64 only), in place of the x86 traits: the packing,
// the register-blocked loop and the epilogue stay one source for every ISA. Not a standalone
// header: it uses isa_kernels.cpp's store_tile_one_by_one and <arm_neon.h>.
//
// NEON is baseline on AArch64 (every ARMv8-A CPU has it), so this path needs no run-time check.
#pragma once

struct Isa : WholeWords {
    // NEON counts bits per byte only (CNT): count into byte accumulators and widen to 64-bit
    // lanes (UADDLP chain) every kStepsPerFlush steps, as the AVX2 path does with vpsadbw.
    // 4 vectors x 2 lanes = 8 channels, times 4 pixels = 16 byte accumulators; with the 4
    // weight vectors, the broadcast and the xor/cnt temporaries that is ~24 of the 32 v-registers.
    // (The accumulators are uint8x16_t, not reinterpreted uint64x2_t as the x86 byte-counting Ops
    // would have them: through the casts GCC 12 no longer keeps them in place
    // and copies all 16 every step, which llvm-mca puts at ~30 % more cycles per step.)
    static constexpr int kLanes = 2, kVectors = 4, kPixels = 4;
    using Vec = uint64x2_t;
    static Vec load(const uint64_t* p, int) { return vld1q_u64(p); }
    static Vec differ(const uint64_t* activation, Vec weights, int) { return veorq_u64(vdupq_n_u64(*activation), weights); }
    static Vec zero() { return vdupq_n_u64(0); }

    static constexpr int kGroup = 1;
    static constexpr int64_t kStepsPerFlush = 31;  // each step adds <= 8 per byte: 31 * 8 < 256
    using Acc = uint8x16_t;
    static Acc zero_acc() { return vdupq_n_u8(0); }
    static Acc add_popcounts(Acc acc, const Vec (&d)[1]) { return vaddq_u8(acc, vcntq_u8(vreinterpretq_u8_u64(d[0]))); }
    using Total = Vec;
    static Total zero_total() { return zero(); }
    static Vec flush(Vec total, Acc acc) { return vaddq_u64(total, vpaddlq_u32(vpaddlq_u16(vpaddlq_u8(acc)))); }

    // Epilogue on 2 channels of one pixel (the low halves of the 64-bit totals, which are < 2^31).
    // multiplier * d + bias is written with vector operators, like the scalar formula, so the
    // compiler applies the same contraction to both.
    using Floats = float32x2_t;
    static Floats affine(Vec total, const int32_t* base, const float* multiplier, const float* bias) {
        const int32x2_t twice = vshl_n_s32(vreinterpret_s32_u32(vmovn_u64(total)), 1);
        const int32x2_t d = vsub_s32(vld1_s32(base), twice);
        return vld1_f32(multiplier) * vcvt_f32_s32(d) + vld1_f32(bias);
    }
    template <int NP>
    static void store_columns(float* out, const Residuals& residuals, int64_t channel_stride, const Floats (&rows)[NP],
                              int pixels, int channels) {
        store_tile_one_by_one<kLanes>(out, residuals, channel_stride, 1, rows, pixels, channels);
    }

    // Packing: 16 pixels' words in eight q-registers. A channel sets its bit where !(x - threshold >= 0)
    // (FCMGE is false for NaN): the 32-bit compare masks are sign-extended to 64 bits and the
    // bit is kept where the mask is clear (BIC). NEON has no masked load, so a partial group
    // (the image's last pixels) is copied into a zero-filled buffer first: 0.0 sets no bit.
    struct PackWords { uint64x2_t w[8]; };
    static PackWords pack_zero() {
        PackWords words;
        for (int i = 0; i < 8; ++i) words.w[i] = vdupq_n_u64(0);
        return words;
    }
    static void pack_channel(PackWords& words, const float* x16, int pixels, int channel, float threshold) {
        float partial[16];
        if (pixels < 16) {
            for (int p = 0; p < 16; ++p) partial[p] = p < pixels ? x16[p] : 0.0f;
            x16 = partial;
        }
        const uint64x2_t bits = vdupq_n_u64(uint64_t{1} << channel);
        for (int quad = 0; quad < 4; ++quad) {
            const int32x4_t non_negative = vreinterpretq_s32_u32(vcgeq_f32(vsubq_f32(vld1q_f32(x16 + 4 * quad), vdupq_n_f32(threshold)), vdupq_n_f32(0.0f)));
            const uint64x2_t low = vreinterpretq_u64_s64(vmovl_s32(vget_low_s32(non_negative)));
            const uint64x2_t high = vreinterpretq_u64_s64(vmovl_high_s32(non_negative));
            words.w[2 * quad] = vorrq_u64(words.w[2 * quad], vbicq_u64(bits, low));
            words.w[2 * quad + 1] = vorrq_u64(words.w[2 * quad + 1], vbicq_u64(bits, high));
        }
    }
    static void pack_store(uint64_t* out16, PackWords words) {
        for (int i = 0; i < 8; ++i) vst1q_u64(out16 + 2 * i, words.w[i]);
    }
};
