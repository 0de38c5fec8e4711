// ONNX Runtime custom-op library: runs the plugin form's tscli.ATSSample nodes on the CPU.
//
// Load it with SessionOptions.register_custom_ops_library(path): ORT calls RegisterCustomOps
// below, which adds domain "tscli" with the op ATSSample (the TensorRT plugin's name and
// contract: scores float [B, N], valid bool [B, N], k_like float [K] -> index int32 [B, K+1],
// mask bool [B, K+1]; attribute "scheme" = paper | official, default paper). The arithmetic is
// ats_sample_fast, bit-identical to the CUDA kernel's core.
//
// Only the C API is used, through the OrtApi table ORT hands over, so the library does not link
// against libonnxruntime and works with any ORT whose API version is at least kMinApiVersion
// (1.16: the status-returning CreateKernelV2 / KernelComputeV2). The headers only describe that
// table; tscli/plugins/ort_ops.py finds or fetches them and compiles this file.
#include <stdint.h>
#include <string.h>

#include <new>
#include <string>
#include <vector>

#include "onnxruntime_c_api.h"
#include "ats_sampling_fast.h"

namespace {

constexpr uint32_t kMinApiVersion = 16;
const OrtApi* g_api = nullptr;

struct Kernel {
  int scheme;
};

OrtStatus* error(const std::string& message) {
  return g_api->CreateStatus(ORT_INVALID_ARGUMENT, ("tscli.ATSSample: " + message).c_str());
}

// Element type, and the shape written to `dims`, of one tensor.
OrtStatus* describe(const OrtValue* value, ONNXTensorElementDataType* type, std::vector<int64_t>* dims) {
  OrtTensorTypeAndShapeInfo* info = nullptr;
  OrtStatus* status = g_api->GetTensorTypeAndShape(value, &info);
  if (status != nullptr) return status;
  size_t rank = 0;
  if ((status = g_api->GetTensorElementType(info, type)) == nullptr &&
      (status = g_api->GetDimensionsCount(info, &rank)) == nullptr) {
    dims->assign(rank, 0);
    status = g_api->GetDimensions(info, dims->data(), rank);
  }
  g_api->ReleaseTensorTypeAndShapeInfo(info);
  return status;
}

OrtStatus* ORT_API_CALL create_kernel(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo* info, void** out) {
  // Missing attribute = "paper", as in the TensorRT plugin's creator.
  std::string scheme = "paper";
  size_t size = 0;
  OrtStatus* status = g_api->KernelInfoGetAttribute_string(info, "scheme", nullptr, &size);
  if (status == nullptr && size > 1) {
    std::vector<char> text(size);
    if ((status = g_api->KernelInfoGetAttribute_string(info, "scheme", text.data(), &size)) != nullptr) return status;
    scheme.assign(text.data());
  } else if (status != nullptr) {
    g_api->ReleaseStatus(status);  // not set: keep the default
  }
  int code = -1;
  if (scheme == "paper") code = tscli::ats::kPaper;
  if (scheme == "official") code = tscli::ats::kOfficial;
  if (code < 0) return error("unknown scheme '" + scheme + "'; valid: paper, official");
  Kernel* kernel = new (std::nothrow) Kernel{code};
  if (kernel == nullptr) return g_api->CreateStatus(ORT_FAIL, "tscli.ATSSample: out of memory");
  *out = kernel;
  return nullptr;
}

OrtStatus* ORT_API_CALL compute(void* op_kernel, OrtKernelContext* context) {
  const Kernel& kernel = *static_cast<const Kernel*>(op_kernel);
  const OrtValue* in[3] = {nullptr, nullptr, nullptr};
  for (size_t i = 0; i < 3; ++i) {
    OrtStatus* status = g_api->KernelContext_GetInput(context, i, &in[i]);
    if (status != nullptr) return status;
  }
  ONNXTensorElementDataType types[3];
  std::vector<int64_t> dims[3];
  for (size_t i = 0; i < 3; ++i) {
    OrtStatus* status = describe(in[i], &types[i], &dims[i]);
    if (status != nullptr) return status;
  }
  if (dims[0].size() != 2 || dims[1] != dims[0] || dims[2].size() != 1)
    return error("need scores [B, N], valid [B, N] and k_like [K]");
  const int64_t batch = dims[0][0], n = dims[0][1], k = dims[2][0];
  if (k < 1 || n > (1 << 24) || k > (1 << 24)) return error("K = " + std::to_string(k) + " is out of range 1..2^24");

  // API 16 has no read-only accessor; the inputs are only read.
  void* scores_data = nullptr;
  void* valid_data = nullptr;
  OrtStatus* status = g_api->GetTensorMutableData(const_cast<OrtValue*>(in[0]), &scores_data);
  if (status == nullptr) status = g_api->GetTensorMutableData(const_cast<OrtValue*>(in[1]), &valid_data);
  if (status != nullptr) return status;
  const float* scores = static_cast<const float*>(scores_data);
  const bool* valid = static_cast<const bool*>(valid_data);

  const int64_t out_dims[2] = {batch, k + 1};
  OrtValue* out_index = nullptr;
  OrtValue* out_mask = nullptr;
  int32_t* index = nullptr;
  bool* mask = nullptr;
  if ((status = g_api->KernelContext_GetOutput(context, 0, out_dims, 2, &out_index)) != nullptr ||
      (status = g_api->KernelContext_GetOutput(context, 1, out_dims, 2, &out_mask)) != nullptr ||
      (status = g_api->GetTensorMutableData(out_index, reinterpret_cast<void**>(&index))) != nullptr ||
      (status = g_api->GetTensorMutableData(out_mask, reinterpret_cast<void**>(&mask))) != nullptr)
    return status;

  // bool and uint8_t are both one byte holding 0 or 1 here.
  static_assert(sizeof(bool) == sizeof(uint8_t), "bool tensors are read as bytes");
  std::vector<float> scratch;
  try {
    scratch.resize(static_cast<size_t>(tscli::ats::ats_scratch_floats(static_cast<int>(n), static_cast<int>(k))));
  } catch (const std::bad_alloc&) {
    return g_api->CreateStatus(ORT_FAIL, "tscli.ATSSample: out of memory");
  }
  for (int64_t b = 0; b < batch; ++b) {
    tscli::ats::ats_sample_fast(scores + b * n, reinterpret_cast<const uint8_t*>(valid) + b * n,
                                static_cast<int>(n), static_cast<int>(k), kernel.scheme, scratch.data(),
                                index + b * (k + 1), reinterpret_cast<uint8_t*>(mask) + b * (k + 1));
  }
  return nullptr;
}

void ORT_API_CALL destroy_kernel(void* op_kernel) { delete static_cast<Kernel*>(op_kernel); }

const char* ORT_API_CALL op_name(const OrtCustomOp*) { return "ATSSample"; }
const char* ORT_API_CALL op_provider(const OrtCustomOp*) { return "CPUExecutionProvider"; }

ONNXTensorElementDataType ORT_API_CALL input_type(const OrtCustomOp*, size_t index) {
  return index == 1 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}
size_t ORT_API_CALL input_count(const OrtCustomOp*) { return 3; }
ONNXTensorElementDataType ORT_API_CALL output_type(const OrtCustomOp*, size_t index) {
  return index == 0 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL;
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

// ORT keeps pointers to the op (and the domain) for as long as any session uses them, and a
// library stays loaded for the process, so both live in static storage and are never freed.
const OrtCustomOp g_op = make_op();

}  // namespace

extern "C" {

// Bumped when the library's contract changes (tscli/plugins/ort_ops.py checks it).
__attribute__((visibility("default"))) int tscli_ort_ops_abi_version(void) { return 1; }

__attribute__((visibility("default"))) OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options,
                                                                                   const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(kMinApiVersion);
  if (api == nullptr) {  // an ORT older than 1.16; API version 1 is always there to say so
    const std::string message = std::string("tscli.ATSSample needs ONNX Runtime >= 1.16; this is ") +
                                api_base->GetVersionString();
    return api_base->GetApi(1)->CreateStatus(ORT_NOT_IMPLEMENTED, message.c_str());
  }
  g_api = api;
  // One domain per registration (ORT ties a domain to the session options it was added to); it
  // is never released, like the op: a few bytes per session created.
  OrtCustomOpDomain* domain = nullptr;
  OrtStatus* status = api->CreateCustomOpDomain("tscli", &domain);
  if (status == nullptr) status = api->CustomOpDomain_Add(domain, &g_op);
  if (status == nullptr) status = api->AddCustomOpDomain(options, domain);
  return status;
}

}  // extern "C"
