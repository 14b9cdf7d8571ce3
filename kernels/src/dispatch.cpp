#include "dispatch.h"

#if defined(BINARIZE_X86_KERNELS)
#include "x86_features.h"
#endif

namespace binarize {
namespace {

bool cpu_supports(Isa isa) {
    switch (isa) {
        case Isa::reference:
        case Isa::scalar:
            return true;
#if defined(BINARIZE_X86_KERNELS)
        case Isa::avx2:
            return cpu_has_avx2();
        case Isa::avx512bw:
            return cpu_has_avx512bw();
        case Isa::avx512:
            return cpu_has_avx512_popcount();
#endif
#if defined(BINARIZE_NEON_KERNELS)
        case Isa::neon:  // baseline on AArch64
            return true;
#endif
        default:
            return false;
    }
}

// Fastest first; the reference path is only ever used when asked for.
constexpr Isa kFastIsas[] = {Isa::avx512, Isa::avx512bw, Isa::avx2, Isa::neon, Isa::scalar};
constexpr Isa kAllIsas[] = {Isa::avx512, Isa::avx512bw, Isa::avx2, Isa::neon, Isa::scalar, Isa::reference};

}  // namespace

const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::reference: return "reference";
        case Isa::scalar: return "scalar";
        case Isa::avx2: return "avx2";
        case Isa::avx512bw: return "avx512bw";
        case Isa::avx512: return "avx512";
        case Isa::neon: return "neon";
    }
    return "?";
}

const IsaKernels* isa_kernels(Isa isa) {
    switch (isa) {
        case Isa::scalar: return &isa_scalar::kernels;
#if defined(BINARIZE_X86_KERNELS)
        case Isa::avx2: return &isa_avx2::kernels;
        case Isa::avx512bw: return &isa_avx512bw::kernels;
        case Isa::avx512: return &isa_avx512::kernels;
#endif
#if defined(BINARIZE_NEON_KERNELS)
        case Isa::neon: return &isa_neon::kernels;
#endif
        default: return nullptr;
    }
}

std::string available_isa_list() {
    std::string list;
    for (Isa isa : kAllIsas)
        if (cpu_supports(isa)) list += std::string(list.empty() ? "" : ",") + isa_name(isa);
    return list;
}

IsaChoice choose_isa(const std::string& requested, const char* source) {
    IsaChoice choice;
    if (requested.empty()) {
        for (Isa isa : kFastIsas)
            if (cpu_supports(isa)) return {isa, ""};
        return choice;
    }
    for (Isa isa : kAllIsas) {
        if (requested != isa_name(isa)) continue;
        if (!cpu_supports(isa)) choice.error = std::string(source) + "=" + requested + " is not supported by this CPU";
        choice.isa = isa;
        return choice;
    }
    choice.error = std::string(source) + "=" + requested + " is not one of avx512, avx512bw, avx2, neon, scalar, reference";
    return choice;
}

}  // namespace binarize
