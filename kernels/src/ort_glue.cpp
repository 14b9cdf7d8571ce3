// ONNX Runtime glue of the `binarize` domain (kernels/SPEC.md): the custom-op objects, the
// registration entry point, and the conversion of every error into an OrtStatus (the V2 entry
// points return statuses, so no exception ever unwinds through ONNX Runtime).
//
// The kernel path is chosen per registration, i.e. per SessionOptions: the session config entry
// `binarize.isa` (binarize.runtime.session sets it), else the BINARIZE_ISA environment variable,
// else the fastest path of this CPU. Nothing process-wide is written, so sessions created
// concurrently with different paths cannot see each other's choice.
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "binary_conv_kernel.h"
#include "dispatch.h"
#include "op_definitions.h"
#include "ort_api.h"

#if defined(_WIN32)
#define BINARIZE_EXPORT __declspec(dllexport)
#else
#define BINARIZE_EXPORT __attribute__((visibility("default")))
#endif

namespace binarize {
namespace {

#define BINARIZE_STRINGIFY2(x) #x
#define BINARIZE_STRINGIFY(x) BINARIZE_STRINGIFY2(x)
#define ORT_API_VERSION_STRING BINARIZE_STRINGIFY(ORT_API_VERSION)

constexpr const char* kIsaConfigKey = "binarize.isa";

// The path of the last kernel created on this thread (binarize_last_kernel_isa): session
// creation builds its kernels on the calling thread, so a caller can see which path it got.
thread_local const char* last_kernel_isa = "";

OrtStatus* to_status(const char* op, const std::exception_ptr& error) {
    const OrtApi& api = Ort::GetApi();
    try {
        std::rethrow_exception(error);
    } catch (const Ort::Exception& e) {
        return api.CreateStatus(e.GetOrtErrorCode(), e.what());
    } catch (const std::bad_alloc&) {
        return api.CreateStatus(ORT_FAIL, (std::string(op) + ": out of memory").c_str());
    } catch (const std::exception& e) {
        return api.CreateStatus(ORT_FAIL, (std::string(op) + ": " + e.what()).c_str());
    } catch (...) {
        return api.CreateStatus(ORT_FAIL, (std::string(op) + ": unknown error").c_str());
    }
}

struct BinaryConvKernelEntry : BinaryConvKernel {
    using BinaryConvKernel::BinaryConvKernel;
    OrtStatusPtr ComputeV2(OrtKernelContext* context) {
        try {
            Compute(context);
            return nullptr;
        } catch (...) {
            return to_status(op_name(), std::current_exception());
        }
    }
};

// One op object per operator, for every version of op_definitions.h: ONNX Runtime builds one
// schema per custom-op name (the first object's) and resolves every node to it, so objects per
// version could not be told apart. Versions 2 and 3 add only optional inputs and an attribute
// whose default is version 1's behaviour, and BinaryConv2d version 4 only accepts a residual shape
// that version 3 refused, so one kernel runs them all (BinaryLinear has no version 4: opset 4
// resolves it to version 3).
template <bool kLinear>
struct BinaryOp : Ort::CustomOpBase<BinaryOp<kLinear>, BinaryConvKernelEntry, /*WithStatus=*/true> {
    static constexpr const char* kName = kLinear ? "BinaryLinear" : "BinaryConv2d";
    static_assert(kOpsetVersion == 4, "the versions this library implements");
    static_assert(kBinaryConv2dV4Inputs == kBinaryConv2dV3Inputs, "version 4 changes only the residual's shape");
    static constexpr int kInputs = kLinear ? kBinaryLinearV3Inputs : kBinaryConv2dV4Inputs;
    static constexpr int kRequiredInputs = kLinear ? kBinaryLinearV3RequiredInputs : kBinaryConv2dV4RequiredInputs;
    static_assert(kRequiredInputs == (kLinear ? kBinaryLinearV1Inputs : kBinaryConv2dV1Inputs),
                  "versions 2 and 3 add only optional inputs to version 1's");

    explicit BinaryOp(IsaChoice isa) : isa_(std::move(isa)) {
        this->start_ver_ = kLinear ? kBinaryLinearV1Version : kBinaryConv2dV1Version;
        this->end_ver_ = kOpsetVersion;
    }

    OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
        try {
            if (!isa_.error.empty()) throw Ort::Exception(std::string(kName) + ": " + isa_.error, ORT_INVALID_ARGUMENT);
            *kernel = new BinaryConvKernelEntry(api, info, kLinear, isa_.isa);
            last_kernel_isa = isa_name(isa_.isa);
            return nullptr;
        } catch (...) {
            return to_status(kName, std::current_exception());
        }
    }
    const char* GetName() const { return kName; }
    size_t GetInputTypeCount() const { return kInputs; }
    ONNXTensorElementDataType GetInputType(size_t index) const {
        return index == 1 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    }
    OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
        return static_cast<int>(index) < kRequiredInputs ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
    }
    size_t GetOutputTypeCount() const { return 1; }
    ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }

private:
    const IsaChoice isa_;
};

// One registration = one SessionOptions: its domain and the op objects carrying its path.
struct Registration {
    explicit Registration(const IsaChoice& isa) : conv(isa), linear(isa), domain(kDomain) {
        domain.Add(&conv);
        domain.Add(&linear);
    }
    BinaryOp<false> conv;
    BinaryOp<true> linear;
    Ort::CustomOpDomain domain;
};

IsaChoice session_isa(const OrtApi& api, const OrtSessionOptions* options) {
    int has_entry = 0;
    Ort::ThrowOnError(api.HasSessionConfigEntry(options, kIsaConfigKey, &has_entry));
    if (has_entry) {
        size_t size = 0;
        Ort::ThrowOnError(api.GetSessionConfigEntry(options, kIsaConfigKey, nullptr, &size));
        std::string value(size, '\0');
        Ort::ThrowOnError(api.GetSessionConfigEntry(options, kIsaConfigKey, value.data(), &size));
        value.resize(size > 0 ? size - 1 : 0);  // size counts the terminating NUL
        return choose_isa(value, "session config binarize.isa");
    }
    const char* environment = std::getenv("BINARIZE_ISA");
    return choose_isa(environment == nullptr ? "" : environment, "BINARIZE_ISA");
}

}  // namespace
}  // namespace binarize

extern "C" {

// Entry point called by SessionOptions.register_custom_ops_library. A domain has to outlive
// every session that uses it, so registrations are kept for the process lifetime.
BINARIZE_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
    const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
    if (api == nullptr)  // older runtime: version 1 of the API always exists and can report it
        return api_base->GetApi(1)->CreateStatus(
            ORT_FAIL, "libbinarize_ort needs ONNX Runtime C API version " ORT_API_VERSION_STRING " (onnxruntime >= 1.21)");
    Ort::InitApi(api);
    static std::mutex registrations_mutex;
    static std::vector<std::unique_ptr<binarize::Registration>> registrations;
    try {
        auto registration = std::make_unique<binarize::Registration>(binarize::session_isa(*api, options));
        Ort::UnownedSessionOptions(options).Add(registration->domain);
        std::lock_guard<std::mutex> lock(registrations_mutex);
        registrations.push_back(std::move(registration));
        return nullptr;
    } catch (const Ort::Exception& e) {
        return api->CreateStatus(e.GetOrtErrorCode(), e.what());
    } catch (const std::exception& e) {
        return api->CreateStatus(ORT_FAIL, e.what());
    }
}

// Comma-separated instruction set paths this CPU can run, fastest first (read by binarize.kernels).
BINARIZE_EXPORT const char* binarize_available_isas() {
    static const std::string list = binarize::available_isa_list();
    return list.c_str();
}

// The path ("avx512", "avx2", "scalar", "reference") of the last BinaryConv2d / BinaryLinear
// kernel created on the calling thread, "" when none was (read by binarize.kernels).
BINARIZE_EXPORT const char* binarize_last_kernel_isa() { return binarize::last_kernel_isa; }

}  // extern "C"
