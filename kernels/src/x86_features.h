// What the x86-64 CPU and the OS support, read with CPUID/XGETBV (x86_features.cpp).
//
// Not __builtin_cpu_supports: that reads a table a compiler-runtime constructor fills, and
// runtimes differ (zig's, which builds the manylinux wheels, leaves it empty, so every check says
// no). CPUID is the ground truth and also tells whether the OS saves the wide registers.
#pragma once

namespace binarize {

bool cpu_has_avx2();             // AVX2 + POPCNT, YMM state enabled by the OS
bool cpu_has_avx512bw();         // AVX-512 F/BW/VL/DQ (and AVX2), ZMM state enabled
bool cpu_has_avx512_popcount();  // AVX-512 F/BW/VL/DQ + VPOPCNTDQ (and AVX2), ZMM state enabled

}  // namespace binarize
