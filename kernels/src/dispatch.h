// Instruction set selection: which kernel paths this CPU can run and which one a session uses.
// Only dispatch.cpp decides which paths this CPU can run (x86-64 features read with CPUID in
// x86_features.cpp; NEON is baseline on AArch64); another architecture adds its Isa value, its
// check and its IsaKernels there.
#pragma once

#include <string>

#include "kernel_api.h"

namespace binarize {

enum class Isa { reference, scalar, avx2, avx512bw, avx512, neon };

const char* isa_name(Isa isa);
// The ISA kernels of a path; nullptr for the reference path (reference_kernels.h).
const IsaKernels* isa_kernels(Isa isa);
// Paths this CPU can run, fastest first, comma-separated (e.g. "avx512,avx512bw,avx2,scalar,reference").
std::string available_isa_list();

// The path for a session: `requested` (empty = the fastest this CPU supports) from `source`
// ("BINARIZE_ISA" or the session config entry), or the error to report when a kernel of that
// session is created (so that a bad choice fails exactly the sessions that run binarize ops).
struct IsaChoice {
    Isa isa = Isa::scalar;
    std::string error;  // empty when `isa` is valid
};
IsaChoice choose_isa(const std::string& requested, const char* source);

}  // namespace binarize
