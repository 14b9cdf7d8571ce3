#include "x86_features.h"

#include <cpuid.h>

#include <cstdint>

namespace binarize {
namespace {

struct X86Features {
    bool avx2 = false;
    bool avx512bw = false;
    bool avx512_popcount = false;
};

bool bit(unsigned reg, int n) { return (reg >> n) & 1u; }

// XCR0: which register states the OS saves on a context switch (Intel SDM vol. 1, 13.3).
uint64_t enabled_register_states() {
    uint32_t eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return (static_cast<uint64_t>(edx) << 32) | eax;
}

X86Features detect() {
    X86Features features;
    unsigned eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return features;
    const bool popcnt = bit(ecx, 23), osxsave = bit(ecx, 27), avx = bit(ecx, 28);
    if (!osxsave || !avx || __get_cpuid_max(0, nullptr) < 7) return features;
    const uint64_t xcr0 = enabled_register_states();
    const bool ymm_state = (xcr0 & 0x6) == 0x6;     // SSE + AVX
    const bool zmm_state = (xcr0 & 0xe6) == 0xe6;   // + opmask, ZMM_Hi256, Hi16_ZMM
    __cpuid_count(7, 0, eax, ebx, ecx, edx);
    features.avx2 = ymm_state && popcnt && bit(ebx, 5);
    features.avx512bw = features.avx2 && zmm_state && bit(ebx, 16) /* F */ && bit(ebx, 17) /* DQ */ &&
                        bit(ebx, 30) /* BW */ && bit(ebx, 31) /* VL */;
    features.avx512_popcount = features.avx512bw && bit(ecx, 14) /* VPOPCNTDQ */;
    return features;
}

const X86Features& features() {
    static const X86Features detected = detect();
    return detected;
}

}  // namespace

bool cpu_has_avx2() { return features().avx2; }
bool cpu_has_avx512bw() { return features().avx512bw; }
bool cpu_has_avx512_popcount() { return features().avx512_popcount; }

}  // namespace binarize
