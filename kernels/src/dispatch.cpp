#include "dispatch.h"

namespace binarize {
namespace {

bool cpu_supports(Isa isa) {
    switch (isa) {
        case Isa::reference:
        case Isa::scalar:
            return true;
#if defined(BINARIZE_X86_KERNELS)
        case Isa::avx2:
            return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
        case Isa::avx512bw:
            return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                   __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
        case Isa::avx512:
            return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                   __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                   __builtin_cpu_supports("avx512vpopcntdq");
#endif
        default:
            return false;
    }
}

// Fastest first; the reference path is only ever used when asked for.
constexpr Isa kFastIsas[] = {Isa::avx512, Isa::avx512bw, Isa::avx2, Isa::scalar};
constexpr Isa kAllIsas[] = {Isa::avx512, Isa::avx512bw, Isa::avx2, Isa::scalar, Isa::reference};

}  // namespace

const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::reference: return "reference";
        case Isa::scalar: return "scalar";
        case Isa::avx2: return "avx2";
        case Isa::avx512bw: return "avx512bw";
        case Isa::avx512: return "avx512";
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
    choice.error = std::string(source) + "=" + requested + " is not one of avx512, avx512bw, avx2, scalar, reference";
    return choice;
}

}  // namespace binarize
