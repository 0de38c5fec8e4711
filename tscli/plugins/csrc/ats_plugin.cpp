// TensorRT IPluginV3 glue for the ATS plugins (TensorRT >= 10.0; written against the public
// IPluginV3One* interfaces, which TensorRT 11 keeps).
//
//   ATSSample  version "1", namespace "tscli"
//     inputs   scores  float32  [B, N]   raw candidate scores (CLS excluded)
//              valid   int32    [B, N]   1 = candidate, 0 = not (any nonzero counts as 1)
//              k_like  float32  [K]      only its length matters (K from the profile)
//     field    scheme  string "paper" | "official"  (an ONNX STRING attribute reaches the
//                      plugin as kCHAR; an INT attribute 0 = paper, 1 = official also works)
//     outputs  index   int32    [B, K+1]  slot -> token position in the block input (CLS = 0)
//              mask    int32    [B, K+1]  1 = slot holds a token, 0 = padding
//   No bool or uint8 tensor crosses the plugin boundary: PluginTensorDesc in every TensorRT
//   header from 10.0 to 11.x says kBOOL and kUINT8 are not supported for plugin I/O.
//   The sampling step is float32 only (the picks are held to the float32 reference):
//   supportsFormatCombination offers kFLOAT alone for scores/k_like, never kHALF. In a weakly
//   typed fp16 build TensorRT may convert around the node; in a strongly typed network (always in
//   TensorRT 11) types follow the graph, so the ONNX graph itself must feed float32 here.
//   N is limited by the kernel's shared memory (ats::sample_max_tokens()); configurePlugin
//   refuses a profile whose max N exceeds it, so the engine build fails, not enqueue.
//   ATSGather  version "1", namespace "tscli"
//     inputs   x       float32 | float16  [B, T, D]   (copying values: fp16 loses nothing)
//              index   int32              [B, S]
//     output   y       same type as x     [B, S, D]   y[b, s] = x[b, index[b, s]]
//
// Loading: IPluginRegistry::loadLibrary(path) (trt.get_plugin_registry().load_library(path))
// uses the exported getCreators()/setLoggerFinder(). There is deliberately no static
// registration: loadLibrary fails when a creator is already registered. Callers that dlopen the
// library themselves (ctypes) call tscli_register_plugins() once instead.
//
// Built by CMakeLists.txt where TensorRT >= 10 headers exist. Without the TensorRT library it can
// still be compile-checked against header sets: python -m tscli.plugins.trt_header_check DIR...
#include <NvInferRuntime.h>

#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "ats_sampling_core.h"
#include "ats_sampling_kernels.cuh"

using namespace nvinfer1;

namespace tscli {
namespace trt {
namespace {

constexpr char const* kNamespace = "tscli";
constexpr char const* kVersion = "1";
constexpr char const* kSampleName = "ATSSample";
constexpr char const* kGatherName = "ATSGather";

ILoggerFinder* gLoggerFinder = nullptr;

void log_error(std::string const& message) noexcept {
  ILogger* logger = gLoggerFinder != nullptr ? gLoggerFinder->findLogger() : nullptr;
  if (logger != nullptr) logger->log(ILogger::Severity::kERROR, ("[tscli] " + message).c_str());
}

bool is_float_like(DataType t) { return t == DataType::kFLOAT || t == DataType::kHALF; }

ats::ElemType elem_type(DataType t) { return t == DataType::kHALF ? ats::ElemType::kFloat16 : ats::ElemType::kFloat32; }

// Scheme code from a plugin field: kCHAR "paper"/"official" (what the ONNX parser makes of a
// STRING attribute, with or without a trailing NUL) or kINT32 0/1. Returns -1 when invalid.
int32_t parse_scheme(PluginField const& field) {
  if (field.type == PluginFieldType::kINT32 && field.length >= 1) {
    int32_t const code = *static_cast<int32_t const*>(field.data);
    return ats::is_valid_scheme(code) ? code : -1;
  }
  if (field.type == PluginFieldType::kCHAR) {
    std::string text(static_cast<char const*>(field.data), static_cast<size_t>(field.length));
    text = text.c_str();  // drop a trailing NUL if the length counted it
    if (text == "paper") return ats::kPaper;
    if (text == "official") return ats::kOfficial;
  }
  return -1;
}

char const* scheme_name(int32_t code) { return code == ats::kOfficial ? "official" : "paper"; }

// Common IPluginV3 boilerplate: capability dispatch and the identity strings.
class PluginBase : public IPluginV3, public IPluginV3OneCore, public IPluginV3OneBuild, public IPluginV3OneRuntime {
 public:
  explicit PluginBase(char const* name) : mName(name) {}

  IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override {
    switch (type) {
      case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
      case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
      case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
  }

  AsciiChar const* getPluginName() const noexcept override { return mName; }
  AsciiChar const* getPluginVersion() const noexcept override { return kVersion; }
  AsciiChar const* getPluginNamespace() const noexcept override { return kNamespace; }

  IPluginV3* attachToContext(IPluginResourceContext* /*context*/) noexcept override { return clone(); }

 private:
  char const* mName;
};

// ---- ATSSample -----------------------------------------------------------------------------

class SamplePlugin final : public PluginBase {
 public:
  explicit SamplePlugin(int32_t scheme) : PluginBase(kSampleName), mScheme(scheme) {
    mSchemeText = scheme_name(scheme);
    mFields.emplace_back("scheme", mSchemeText.c_str(), PluginFieldType::kCHAR,
                         static_cast<int32_t>(mSchemeText.size()));
    mCollection.nbFields = static_cast<int32_t>(mFields.size());
    mCollection.fields = mFields.data();
  }
  // mCollection points into this object: never copy it, clone() builds a fresh one.
  SamplePlugin(SamplePlugin const&) = delete;
  SamplePlugin& operator=(SamplePlugin const&) = delete;

  IPluginV3* clone() noexcept override {
    try {
      return new SamplePlugin(mScheme);
    } catch (std::exception const& e) {
      log_error(std::string("ATSSample clone: ") + e.what());
      return nullptr;
    }
  }

  int32_t getNbOutputs() const noexcept override { return 2; }

  // Called by the builder for each profile with its min/opt/max shapes: the place to refuse an N
  // the kernel cannot take, so the engine build fails with the reason instead of a later
  // onShapeChange / enqueue.
  int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* /*out*/,
                          int32_t nbOutputs) noexcept override {
    if (nbInputs != 3 || nbOutputs != 2) {
      log_error("ATSSample expects 3 inputs and 2 outputs, got " + std::to_string(nbInputs) + " and " +
                std::to_string(nbOutputs));
      return -1;
    }
    if (in[0].desc.dims.nbDims != 2 || in[1].desc.dims.nbDims != 2 || in[2].desc.dims.nbDims != 1) {
      log_error("ATSSample expects scores [B, N], valid [B, N], k_like [K]");
      return -1;
    }
    // max holds the profile's kMAX shape; an unknown (negative) value is left to onShapeChange.
    int64_t const max_n = in[0].max.nbDims == 2 ? in[0].max.d[1] : in[0].desc.dims.d[1];
    int64_t const limit = ats::sample_max_tokens();
    if (max_n > limit) {
      log_error("ATSSample: the profile's max token count N = " + std::to_string(max_n) +
                " exceeds the sampling kernel's limit of " + std::to_string(limit) +
                " tokens (48 KiB of shared memory per image)");
      return -1;
    }
    return 0;
  }

  int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* /*inputTypes*/,
                             int32_t nbInputs) const noexcept override {
    if (nbInputs != 3 || nbOutputs != 2) return -1;
    outputTypes[0] = DataType::kINT32;
    outputTypes[1] = DataType::kINT32;
    return 0;
  }

  // index/mask: [B, K + 1] with B from scores and K from k_like's only dimension, so K stays
  // the symbolic profile dimension and one engine serves the whole K range.
  int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
                          int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
                          IExprBuilder& exprBuilder) noexcept override {
    if (nbInputs != 3 || nbOutputs != 2 || inputs[0].nbDims != 2 || inputs[2].nbDims != 1) return -1;
    IDimensionExpr const* slots =
        exprBuilder.operation(DimensionOperation::kSUM, *inputs[2].d[0], *exprBuilder.constant(1));
    for (int32_t o = 0; o < 2; ++o) {
      outputs[o].nbDims = 2;
      outputs[o].d[0] = inputs[0].d[0];
      outputs[o].d[1] = slots;
    }
    return 0;
  }

  bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override {
    if (nbInputs != 3 || nbOutputs != 2 || pos < 0 || pos >= 5) return false;
    PluginTensorDesc const& d = inOut[pos].desc;
    if (d.format != TensorFormat::kLINEAR) return false;
    switch (pos) {
      case 0: return d.type == DataType::kFLOAT;  // scores: fp32 even in an fp16 engine
      case 1: return d.type == DataType::kINT32;  // valid
      case 2: return d.type == DataType::kFLOAT;  // k_like
      default: return d.type == DataType::kINT32;  // index, mask
    }
  }

  int32_t onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/,
                        int32_t nbOutputs) noexcept override {
    if (nbInputs != 3 || nbOutputs != 2) return -1;
    if (in[0].dims.d[1] > ats::sample_max_tokens()) {  // configurePlugin already refused such a profile
      log_error("ATSSample: N = " + std::to_string(in[0].dims.d[1]) + " exceeds the kernel's limit of " +
                std::to_string(ats::sample_max_tokens()) + " tokens");
      return -1;
    }
    return 0;
  }

  int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
                  void const* const* inputs, void* const* outputs, void* /*workspace*/,
                  cudaStream_t stream) noexcept override {
    int const batch = static_cast<int>(inputDesc[0].dims.d[0]);
    int const n = static_cast<int>(inputDesc[0].dims.d[1]);
    int const k = static_cast<int>(inputDesc[2].dims.d[0]);
    // supportsFormatCombination admits only kFLOAT scores and kINT32 valid/index/mask.
    cudaError_t const status = ats::launch_ats_sample(
        inputs[0], ats::ElemType::kFloat32, static_cast<int32_t const*>(inputs[1]), batch, n, k, mScheme,
        static_cast<int32_t*>(outputs[0]), static_cast<int32_t*>(outputs[1]), nullptr, stream);
    if (status != cudaSuccess) {
      log_error(std::string("ATSSample launch failed: ") + cudaGetErrorString(status));
      return -1;
    }
    return 0;
  }

  PluginFieldCollection const* getFieldsToSerialize() noexcept override { return &mCollection; }

 private:
  int32_t mScheme;
  std::string mSchemeText;
  std::vector<PluginField> mFields;
  PluginFieldCollection mCollection{};
};

// ---- ATSGather -----------------------------------------------------------------------------

class GatherPlugin final : public PluginBase {
 public:
  GatherPlugin() : PluginBase(kGatherName) {}

  IPluginV3* clone() noexcept override {
    try {
      return new GatherPlugin();
    } catch (std::exception const& e) {
      log_error(std::string("ATSGather clone: ") + e.what());
      return nullptr;
    }
  }

  int32_t getNbOutputs() const noexcept override { return 1; }

  int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* /*out*/,
                          int32_t nbOutputs) noexcept override {
    if (nbInputs != 2 || nbOutputs != 1) return -1;
    return (in[0].desc.dims.nbDims == 3 && in[1].desc.dims.nbDims == 2) ? 0 : -1;
  }

  int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                             int32_t nbInputs) const noexcept override {
    if (nbInputs != 2 || nbOutputs != 1) return -1;
    outputTypes[0] = inputTypes[0];
    return 0;
  }

  int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
                          int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
                          IExprBuilder& /*exprBuilder*/) noexcept override {
    if (nbInputs != 2 || nbOutputs != 1 || inputs[0].nbDims != 3 || inputs[1].nbDims != 2) return -1;
    outputs[0].nbDims = 3;
    outputs[0].d[0] = inputs[0].d[0];
    outputs[0].d[1] = inputs[1].d[1];
    outputs[0].d[2] = inputs[0].d[2];
    return 0;
  }

  bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override {
    if (nbInputs != 2 || nbOutputs != 1 || pos < 0 || pos >= 3) return false;
    PluginTensorDesc const& d = inOut[pos].desc;
    if (d.format != TensorFormat::kLINEAR) return false;
    if (pos == 1) return d.type == DataType::kINT32;
    if (pos == 2) return d.type == inOut[0].desc.type;  // output follows x
    return is_float_like(d.type);
  }

  int32_t onShapeChange(PluginTensorDesc const* /*in*/, int32_t nbInputs, PluginTensorDesc const* /*out*/,
                        int32_t nbOutputs) noexcept override {
    return (nbInputs == 2 && nbOutputs == 1) ? 0 : -1;
  }

  int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
                  void const* const* inputs, void* const* outputs, void* /*workspace*/,
                  cudaStream_t stream) noexcept override {
    Dims const& x = inputDesc[0].dims;
    cudaError_t const status = ats::launch_token_gather(
        inputs[0], elem_type(inputDesc[0].type), static_cast<int32_t const*>(inputs[1]), static_cast<int>(x.d[0]),
        static_cast<int>(x.d[1]), static_cast<int>(inputDesc[1].dims.d[1]), static_cast<int>(x.d[2]), outputs[0],
        stream);
    if (status != cudaSuccess) {
      log_error(std::string("ATSGather launch failed: ") + cudaGetErrorString(status));
      return -1;
    }
    return 0;
  }

  PluginFieldCollection const* getFieldsToSerialize() noexcept override { return &mCollection; }

 private:
  PluginFieldCollection mCollection{0, nullptr};
};

// ---- creators ------------------------------------------------------------------------------

class CreatorBase : public IPluginCreatorV3One {
 public:
  explicit CreatorBase(char const* name) : mName(name) {}
  AsciiChar const* getPluginName() const noexcept override { return mName; }
  AsciiChar const* getPluginVersion() const noexcept override { return kVersion; }
  AsciiChar const* getPluginNamespace() const noexcept override { return kNamespace; }

 private:
  char const* mName;
};

class SampleCreator final : public CreatorBase {
 public:
  SampleCreator() : CreatorBase(kSampleName) {
    // Declared as kCHAR: the ONNX parser forwards only the fields listed here, and converts the
    // node's STRING attribute "scheme" to kCHAR.
    mFields.emplace_back("scheme", nullptr, PluginFieldType::kCHAR, 0);
    mCollection.nbFields = static_cast<int32_t>(mFields.size());
    mCollection.fields = mFields.data();
  }

  PluginFieldCollection const* getFieldNames() noexcept override { return &mCollection; }

  // Missing "scheme" means "paper", the documented default; an unknown value is an error.
  IPluginV3* createPlugin(AsciiChar const* /*name*/, PluginFieldCollection const* fc,
                          TensorRTPhase /*phase*/) noexcept override {
    try {
      int32_t scheme = ats::kPaper;
      for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
        if (std::strcmp(fc->fields[i].name, "scheme") != 0) continue;
        scheme = parse_scheme(fc->fields[i]);
        if (scheme < 0) {
          log_error("ATSSample: attribute 'scheme' must be \"paper\" or \"official\" (or 0 / 1)");
          return nullptr;
        }
      }
      return new SamplePlugin(scheme);
    } catch (std::exception const& e) {
      log_error(std::string("ATSSample createPlugin: ") + e.what());
      return nullptr;
    }
  }

 private:
  std::vector<PluginField> mFields;
  PluginFieldCollection mCollection{};
};

class GatherCreator final : public CreatorBase {
 public:
  GatherCreator() : CreatorBase(kGatherName) {}
  PluginFieldCollection const* getFieldNames() noexcept override { return &mCollection; }
  IPluginV3* createPlugin(AsciiChar const* /*name*/, PluginFieldCollection const* /*fc*/,
                          TensorRTPhase /*phase*/) noexcept override {
    try {
      return new GatherPlugin();
    } catch (std::exception const& e) {
      log_error(std::string("ATSGather createPlugin: ") + e.what());
      return nullptr;
    }
  }

 private:
  PluginFieldCollection mCollection{0, nullptr};
};

IPluginCreatorInterface* const* creator_list(int32_t& count) {
  static SampleCreator sample;
  static GatherCreator gather;
  static IPluginCreatorInterface* const list[] = {&sample, &gather};
  count = static_cast<int32_t>(sizeof(list) / sizeof(list[0]));
  return list;
}

}  // namespace
}  // namespace trt
}  // namespace tscli

// Entry points looked up by IPluginRegistry::loadLibrary (and trtexec --dynamicPlugins).
extern "C" {

__attribute__((visibility("default"))) void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
  tscli::trt::gLoggerFinder = finder;
}

__attribute__((visibility("default"))) nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  return tscli::trt::creator_list(nbCreators);
}

// For callers that dlopen the library themselves (ctypes.CDLL): registers both creators in the
// global registry. Returns the number registered (2), or fewer if some were already present.
__attribute__((visibility("default"))) int32_t tscli_register_plugins() {
  int32_t count = 0;
  IPluginCreatorInterface* const* list = tscli::trt::creator_list(count);
  int32_t registered = 0;
  for (int32_t i = 0; i < count; ++i) {
    if (getPluginRegistry()->registerCreator(*list[i], tscli::trt::kNamespace)) ++registered;
  }
  return registered;
}

}  // extern "C"
