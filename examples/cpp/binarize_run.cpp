// binarize_run: runs an exported binarize ONNX model through ONNX Runtime's C++ API with the
// binarize op library registered. No Python on the device: the model, libbinarize_ort.so,
// libonnxruntime.so.1 and this program are all it needs (README "Deploying to an edge device").
//
//   binarize_run --ops ./libbinarize_ort.so [--threads N] MODEL.onnx INPUT.npy OUTPUT.npy [MODEL INPUT OUTPUT ...]
//
// Each MODEL gets its INPUT (a float32 .npy array for the model's single input, e.g. written by
// numpy.save) and its first output is written to OUTPUT (float32 .npy). For each run it prints
// the output shape and, per row, the index of the largest value (the predicted class of a
// classifier). Several triples in one call share the process, which keeps start-up (slow under
// an emulator) out of the loop. It first prints the kernel paths the op library can run on this
// CPU, fastest (the default) first; BINARIZE_ISA=neon|scalar|reference|... forces one.
#include <dlfcn.h>
#include <onnxruntime_cxx_api.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct Array {
    std::vector<int64_t> shape;
    std::vector<float> values;
};

[[noreturn]] void fail(const std::string& message) { throw std::runtime_error(message); }

int64_t element_count(const std::vector<int64_t>& shape) {
    int64_t count = 1;
    for (int64_t d : shape) count *= d;
    return count;
}

std::string shape_string(const std::vector<int64_t>& shape) {
    std::ostringstream s;
    s << "[";
    for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
    s << "]";
    return s.str();
}

// The .npy format (numpy.lib.format): magic, version, little-endian header length, then a
// Python dict literal {'descr': '<f4', 'fortran_order': False, 'shape': (...), } padded with
// spaces and a newline. Only what numpy.save writes for a C-ordered float32 array is accepted.
Array read_npy(const std::string& path) {
    std::ifstream file(path, std::ios::binary);
    if (!file) fail(path + ": cannot open");
    char magic[8];
    if (!file.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0) fail(path + ": not a .npy file");
    uint32_t header_length = 0;
    unsigned char length_bytes[4] = {0, 0, 0, 0};
    const int length_size = magic[6] == 1 ? 2 : 4;
    if (!file.read(reinterpret_cast<char*>(length_bytes), length_size)) fail(path + ": truncated header");
    for (int i = length_size - 1; i >= 0; --i) header_length = header_length * 256 + length_bytes[i];
    std::string header(header_length, ' ');
    if (!file.read(&header[0], header_length)) fail(path + ": truncated header");
    if (header.find("'descr': '<f4'") == std::string::npos)
        fail(path + ": dtype must be little-endian float32 ('<f4'); save it with numpy.asarray(x, numpy.float32)");
    if (header.find("'fortran_order': False") == std::string::npos) fail(path + ": Fortran-ordered arrays are not supported");
    const size_t open = header.find("'shape': (");
    const size_t close = header.find(')', open);
    if (open == std::string::npos || close == std::string::npos) fail(path + ": no shape in the header");
    Array array;
    std::istringstream dims(header.substr(open + 10, close - open - 10));
    for (std::string dim; std::getline(dims, dim, ',');)
        if (dim.find_first_not_of(' ') != std::string::npos) array.shape.push_back(std::stoll(dim));
    array.values.resize(static_cast<size_t>(element_count(array.shape)));
    if (!file.read(reinterpret_cast<char*>(array.values.data()), static_cast<std::streamsize>(array.values.size() * sizeof(float))))
        fail(path + ": fewer values than its shape " + shape_string(array.shape) + " needs");
    return array;
}

// Written to PATH.partial, then renamed: a reader never sees a half-written file.
void write_npy(const std::string& path, const std::vector<int64_t>& shape, const float* values) {
    std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (";
    for (int64_t d : shape) header += std::to_string(d) + ", ";
    header += "), }";
    header.append(64 - (10 + header.size() + 1) % 64, ' ');  // 10-byte prefix, total a multiple of 64
    header += '\n';
    const std::string partial = path + ".partial";
    {
        std::ofstream file(partial, std::ios::binary | std::ios::trunc);
        const uint16_t length = static_cast<uint16_t>(header.size());
        file.write("\x93NUMPY\x01\x00", 8);
        const char length_bytes[2] = {static_cast<char>(length & 0xff), static_cast<char>(length >> 8)};
        file.write(length_bytes, 2);
        file << header;
        file.write(reinterpret_cast<const char*>(values), static_cast<std::streamsize>(element_count(shape) * sizeof(float)));
        if (!file) fail(path + ": write failed");
    }
    if (std::rename(partial.c_str(), path.c_str()) != 0) fail(path + ": cannot rename " + partial + " to it");
}

void run_one(Ort::Env& env, const Ort::SessionOptions& options, const std::string& model_path,
             const std::string& input_path, const std::string& output_path) {
    Ort::Session session(env, model_path.c_str(), options);
    if (session.GetInputCount() != 1)
        fail(model_path + ": has " + std::to_string(session.GetInputCount()) + " inputs; binarize_run feeds exactly one");
    Ort::AllocatorWithDefaultOptions allocator;
    const Ort::AllocatedStringPtr input_name = session.GetInputNameAllocated(0, allocator);
    const Ort::AllocatedStringPtr output_name = session.GetOutputNameAllocated(0, allocator);

    Array input = read_npy(input_path);
    const Ort::MemoryInfo memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    Ort::Value input_tensor = Ort::Value::CreateTensor<float>(memory, input.values.data(), input.values.size(),
                                                              input.shape.data(), input.shape.size());
    const char* input_names[] = {input_name.get()};
    const char* output_names[] = {output_name.get()};
    std::vector<Ort::Value> outputs = session.Run(Ort::RunOptions{nullptr}, input_names, &input_tensor, 1, output_names, 1);

    const Ort::TensorTypeAndShapeInfo info = outputs[0].GetTensorTypeAndShapeInfo();
    if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) fail(model_path + ": the first output is not float32");
    const std::vector<int64_t> shape = info.GetShape();
    const float* values = outputs[0].GetTensorData<float>();
    write_npy(output_path, shape, values);

    std::cout << output_path << ": shape " << shape_string(shape);
    if (!shape.empty() && shape[0] > 0) {
        const int64_t row = element_count(shape) / shape[0];
        std::cout << ", argmax per row:";
        for (int64_t r = 0; r < shape[0]; ++r) {
            int64_t best = 0;
            for (int64_t i = 1; i < row; ++i)
                if (values[r * row + i] > values[r * row + best]) best = i;
            std::cout << " " << best;
        }
    }
    std::cout << "\n";
}

// binarize_available_isas() of the op library ORT has just loaded (RTLD_NOLOAD: the same copy).
std::string kernel_paths(const std::string& ops_library) {
    void* library = dlopen(ops_library.c_str(), RTLD_NOW | RTLD_NOLOAD);
    if (library == nullptr) return "?";
    using AvailableIsas = const char* (*)();
    const auto available = reinterpret_cast<AvailableIsas>(dlsym(library, "binarize_available_isas"));
    const std::string paths = available != nullptr ? available() : "?";
    dlclose(library);
    return paths;
}

int usage() {
    std::cerr << "usage: binarize_run --ops LIBBINARIZE_ORT.so [--threads N] MODEL.onnx INPUT.npy OUTPUT.npy "
                 "[MODEL INPUT OUTPUT ...]\n";
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    std::string ops_library;
    int threads = 1;
    std::vector<std::string> files;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--ops" && i + 1 < argc) {
            ops_library = argv[++i];
        } else if (arg == "--threads" && i + 1 < argc) {
            threads = std::atoi(argv[++i]);
            if (threads < 1) {
                std::cerr << "binarize_run: --threads must be a positive integer, got " << argv[i] << "\n";
                return 2;
            }
        } else {
            files.push_back(arg);
        }
    }
    if (ops_library.empty() || files.empty() || files.size() % 3 != 0) return usage();
    try {
        Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "binarize_run");
        Ort::SessionOptions options;
        options.SetIntraOpNumThreads(threads);
        options.RegisterCustomOpsLibrary(ops_library.c_str());
        std::cout << "binarize kernel paths (fastest first): " << kernel_paths(ops_library) << "\n";
        for (size_t i = 0; i < files.size(); i += 3) run_one(env, options, files[i], files[i + 1], files[i + 2]);
    } catch (const std::exception& error) {
        std::cerr << "binarize_run: error: " << error.what() << "\n";
        return 1;
    }
    return 0;
}
