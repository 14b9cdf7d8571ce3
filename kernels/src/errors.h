// Error reporting shared by the glue, attribute, geometry and kernel code (not by the ISA
// kernels): every problem becomes an Ort::Exception whose message starts with the op name; the
// CreateKernelV2 / KernelComputeV2 entry points (ort_glue.cpp) turn it into an OrtStatus, so
// nothing ever unwinds into ONNX Runtime.
#pragma once

#include "ort_api.h"

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

namespace binarize {

template <typename... Parts>
[[noreturn]] void fail(const char* op, const Parts&... parts) {
    std::ostringstream message;
    message << op << ": ";
    (message << ... << parts);
    throw Ort::Exception(message.str(), ORT_INVALID_ARGUMENT);
}

inline std::string shape_string(const std::vector<int64_t>& shape) {
    std::ostringstream s;
    s << "[";
    for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
    s << "]";
    return s.str();
}

}  // namespace binarize
