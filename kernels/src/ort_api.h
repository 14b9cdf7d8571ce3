// The ONNX Runtime C++ API, as every file of this library includes it. The library is built
// against the C API version 21 headers and never links libonnxruntime: the host process hands
// its API table to RegisterCustomOps (ort_glue.cpp), which calls Ort::InitApi. Every translation
// unit must therefore see ORT_API_MANUAL_INIT, or it would reference OrtGetApiBase.
#pragma once

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT
