// The kernel object shared by BinaryConv2d and BinaryLinear: weight validation and the one-time
// reordering, the per-input-size geometry, and the split of the work over ORT's intra-op pool.
#pragma once

#include <memory>
#include <mutex>
#include <vector>

#include "attributes.h"
#include "dispatch.h"
#include "geometry.h"
#include "ort_api.h"

namespace binarize {

// Weights validated once and reordered into the [M/MB][K][MB] block layout of the hot loop.
struct Weights {
    const uint64_t* original = nullptr;  // the ONNX layout [M][KH][KW][CW] (for the reference path)
    std::vector<uint64_t> original_copy; // owns `original` when the weights were constant at creation
    int64_t out_channels = 0;
    int64_t out_channels_padded = 0;
    std::vector<uint64_t> blocked;       // [M_padded/MB][K][MB] elements (IsaKernels::block_weights)
    std::vector<int64_t> tap_popcount;   // [M][taps]: popcount of the tap's words, for padding correction
};

class BinaryConvKernel {
public:
    // `isa` is the session's path (dispatch.h); the attributes are validated here.
    BinaryConvKernel(const OrtApi& api, const OrtKernelInfo* info, bool linear, Isa isa);

    const char* op_name() const { return config_.op; }
    void Compute(OrtKernelContext* context);

private:
    std::shared_ptr<const Geometry> geometry_for(const Weights& weights, const ConvShape& shape);

    const ConvConfig config_;
    const Isa isa_;
    const IsaKernels* const kernels_;  // nullptr for the reference path
    std::unique_ptr<Weights> constant_weights_;
    std::mutex geometry_mutex_;
    std::shared_ptr<const Geometry> cached_geometry_;
};

}  // namespace binarize
