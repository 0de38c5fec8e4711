// ONNX Runtime custom-op library: runs the plugin form's tscli.ATSSample nodes on the CPU.
//
// Load it with SessionOptions.register_custom_ops_library(path): ORT calls RegisterCustomOps
// below, which adds domain "tscli" with the op ATSSample (the TensorRT plugin's name and
// contract: scores float [B, N], valid int32 [B, N] (nonzero = valid), k_like float [K] -> index
// int32 [B, K+1], mask int32 [B, K+1] (0/1); attribute "scheme" = paper | official, default
// paper). int32 flags because TensorRT plugins take no bool tensors, and ORT runs the same node.
// The arithmetic is ats_sample_fast, bit-identical to the CUDA kernel's core, which reads and
// writes the flags as bytes: they are narrowed before it and widened after it here.
//
// Only the C API is used, through the OrtApi table ORT hands over, so the library does not link
// against libonnxruntime and works with any ORT whose API version is at least kMinApiVersion
// (1.16: the status-returning CreateKernelV2 / KernelComputeV2). The headers only describe that
// table; tscli/plugins/ort_ops.py finds or fetches them and compiles this file.
#include <stdint.h>
#include <string.h>

#include <atomic>
#include <new>
#include <string>
#include <vector>

#include "onnxruntime_c_api.h"
#include "ats_sampling_fast.h"

namespace {

constexpr uint32_t kMinApiVersion = 16;
// Set by every RegisterCustomOps (always to the same table); atomic because a session may run on
// one thread while another thread registers the library for a new session.
std::atomic<const OrtApi*> g_api_table{nullptr};
const OrtApi* api() { return g_api_table.load(std::memory_order_acquire); }

struct Kernel {
  int scheme;
};

OrtStatus* error(const std::string& message) {
  return api()->CreateStatus(ORT_INVALID_ARGUMENT, ("tscli.ATSSample: " + message).c_str());
}

std::string shape_text(const std::vector<int64_t>& dims) {
  std::string text = "[";
  for (size_t i = 0; i < dims.size(); ++i) text += (i ? ", " : "") + std::to_string(dims[i]);
  return text + "]";
}

// The shape of one tensor (ORT has already checked the element types against GetInputType).
OrtStatus* shape_of(const OrtValue* value, std::vector<int64_t>* dims) {
  const OrtApi* a = api();
  OrtTensorTypeAndShapeInfo* info = nullptr;
  OrtStatus* status = a->GetTensorTypeAndShape(value, &info);
  if (status != nullptr) return status;
  size_t rank = 0;
  if ((status = a->GetDimensionsCount(info, &rank)) == nullptr) {
    dims->assign(rank, 0);
    status = a->GetDimensions(info, dims->data(), rank);
  }
  a->ReleaseTensorTypeAndShapeInfo(info);
  return status;
}

OrtStatus* ORT_API_CALL create_kernel(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo* info, void** out) {
  // Missing attribute = "paper", as in the TensorRT plugin's creator; a present one must be valid
  // (an empty string too, as there).
  const OrtApi* a = api();
  std::string scheme = "paper";
  size_t size = 0;
  OrtStatus* status = a->KernelInfoGetAttribute_string(info, "scheme", nullptr, &size);
  if (status == nullptr) {
    std::vector<char> text(size + 1, '\0');
    if ((status = a->KernelInfoGetAttribute_string(info, "scheme", text.data(), &size)) != nullptr) return status;
    scheme.assign(text.data());
  } else {
    a->ReleaseStatus(status);  // not set: keep the default
  }
  int code = -1;
  if (scheme == "paper") code = tscli::ats::kPaper;
  if (scheme == "official") code = tscli::ats::kOfficial;
  if (code < 0) return error("unknown scheme '" + scheme + "'; valid: paper, official");
  Kernel* kernel = new (std::nothrow) Kernel{code};
  if (kernel == nullptr) return a->CreateStatus(ORT_FAIL, "tscli.ATSSample: out of memory");
  *out = kernel;
  return nullptr;
}

OrtStatus* ORT_API_CALL compute(void* op_kernel, OrtKernelContext* context) {
  const Kernel& kernel = *static_cast<const Kernel*>(op_kernel);
  const OrtApi* a = api();
  const OrtValue* in[3] = {nullptr, nullptr, nullptr};
  std::vector<int64_t> dims[3];
  for (size_t i = 0; i < 3; ++i) {
    OrtStatus* status = a->KernelContext_GetInput(context, i, &in[i]);
    if (status == nullptr) status = shape_of(in[i], &dims[i]);
    if (status != nullptr) return status;
  }
  if (dims[0].size() != 2 || dims[1] != dims[0] || dims[2].size() != 1)
    return error("need scores [B, N], valid [B, N] and k_like [K]; got " + shape_text(dims[0]) + ", " +
                 shape_text(dims[1]) + " and " + shape_text(dims[2]));
  const int64_t batch = dims[0][0], n = dims[0][1], k = dims[2][0];
  if (n > (1 << 24)) return error("N = " + std::to_string(n) + " tokens is out of range; valid: 0..2^24");
  if (k < 1 || k > (1 << 24)) return error("K = " + std::to_string(k) + " is out of range; valid: 1..2^24");

  // API 16 has no read-only accessor; the inputs are only read.
  void* scores = nullptr;
  void* valid = nullptr;
  OrtStatus* status = a->GetTensorMutableData(const_cast<OrtValue*>(in[0]), &scores);
  if (status == nullptr) status = a->GetTensorMutableData(const_cast<OrtValue*>(in[1]), &valid);
  if (status != nullptr) return status;

  const int64_t out_dims[2] = {batch, k + 1};
  OrtValue* out_index = nullptr;
  OrtValue* out_mask = nullptr;
  void* index = nullptr;
  void* mask = nullptr;
  if ((status = a->KernelContext_GetOutput(context, 0, out_dims, 2, &out_index)) != nullptr ||
      (status = a->KernelContext_GetOutput(context, 1, out_dims, 2, &out_mask)) != nullptr ||
      (status = a->GetTensorMutableData(out_index, &index)) != nullptr ||
      (status = a->GetTensorMutableData(out_mask, &mask)) != nullptr)
    return status;

  try {
    // The core takes 0/1 bytes; the node's flags are int32 (any nonzero = valid).
    const int32_t* valid_in = static_cast<const int32_t*>(valid);
    std::vector<uint8_t> valid_bytes(static_cast<size_t>(batch * n));
    for (size_t i = 0; i < valid_bytes.size(); ++i) valid_bytes[i] = valid_in[i] != 0;
    std::vector<uint8_t> mask_bytes(static_cast<size_t>(batch * (k + 1)));
    tscli::ats::ats_sample_fast_batch(static_cast<const float*>(scores), valid_bytes.data(), batch,
                                      static_cast<int>(n), static_cast<int>(k), kernel.scheme,
                                      static_cast<int32_t*>(index), mask_bytes.data());
    int32_t* mask_out = static_cast<int32_t*>(mask);
    for (size_t i = 0; i < mask_bytes.size(); ++i) mask_out[i] = mask_bytes[i];
  } catch (const std::bad_alloc&) {
    return a->CreateStatus(ORT_FAIL, "tscli.ATSSample: out of memory");
  }
  return nullptr;
}

void ORT_API_CALL destroy_kernel(void* op_kernel) { delete static_cast<Kernel*>(op_kernel); }

const char* ORT_API_CALL op_name(const OrtCustomOp*) { return "ATSSample"; }
const char* ORT_API_CALL op_provider(const OrtCustomOp*) { return "CPUExecutionProvider"; }

ONNXTensorElementDataType ORT_API_CALL input_type(const OrtCustomOp*, size_t index) {
  return index == 1 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}
size_t ORT_API_CALL input_count(const OrtCustomOp*) { return 3; }
ONNXTensorElementDataType ORT_API_CALL output_type(const OrtCustomOp*, size_t) {
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;  // index and mask
}
size_t ORT_API_CALL output_count(const OrtCustomOp*) { return 2; }
OrtCustomOpInputOutputCharacteristic ORT_API_CALL required(const OrtCustomOp*, size_t) {
  return INPUT_OUTPUT_REQUIRED;
}
OrtMemType ORT_API_CALL memory_type(const OrtCustomOp*, size_t) { return OrtMemTypeDefault; }
int ORT_API_CALL min_arity(const OrtCustomOp*) { return 1; }
int ORT_API_CALL homogeneous(const OrtCustomOp*) { return 1; }

OrtCustomOp make_op() {
  OrtCustomOp op;
  memset(&op, 0, sizeof(op));  // fields newer than kMinApiVersion stay unset; ORT reads by version
  op.version = kMinApiVersion;
  op.GetName = op_name;
  op.GetExecutionProviderType = op_provider;
  op.GetInputType = input_type;
  op.GetInputTypeCount = input_count;
  op.GetOutputType = output_type;
  op.GetOutputTypeCount = output_count;
  op.KernelDestroy = destroy_kernel;
  op.GetInputCharacteristic = required;
  op.GetOutputCharacteristic = required;
  op.GetInputMemoryType = memory_type;
  op.GetVariadicInputMinArity = min_arity;
  op.GetVariadicInputHomogeneity = homogeneous;
  op.GetVariadicOutputMinArity = min_arity;
  op.GetVariadicOutputHomogeneity = homogeneous;
  op.CreateKernelV2 = create_kernel;
  op.KernelComputeV2 = compute;
  return op;
}

// ORT keeps pointers to the op and the domain for as long as a session made from those options
// lives (and unloads the library after that), so the op lives in static storage and each
// domain is left to live as long as the library.
const OrtCustomOp g_op = make_op();

}  // namespace

extern "C" {

// The two exported symbols (the library is built with -fvisibility=hidden).
// Bumped when the library's contract changes (tscli/plugins/ort_ops.py checks it). 2: valid and
// mask became int32 (1 took and gave bool); a version-1 library cannot run a version-2 file.
__attribute__((visibility("default"))) int tscli_ort_ops_abi_version(void) { return 2; }

__attribute__((visibility("default"))) OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options,
                                                                                   const OrtApiBase* api_base) {
  const OrtApi* table = api_base->GetApi(kMinApiVersion);
  if (table == nullptr) {  // an ORT older than 1.16; API version 1 is always there to say so
    const std::string message = std::string("tscli.ATSSample needs ONNX Runtime >= 1.16; this is ") +
                                api_base->GetVersionString();
    return api_base->GetApi(1)->CreateStatus(ORT_NOT_IMPLEMENTED, message.c_str());
  }
  g_api_table.store(table, std::memory_order_release);
  // One domain per registration (ORT ties a domain to the session options it was added to); it
  // is never released, like the op: a few bytes per session created.
  OrtCustomOpDomain* domain = nullptr;
  OrtStatus* status = table->CreateCustomOpDomain("tscli", &domain);
  if (status == nullptr) status = table->CustomOpDomain_Add(domain, &g_op);
  if (status == nullptr) status = table->AddCustomOpDomain(options, domain);
  return status;
}

}  // extern "C"
