// CPU build of the ATS sampling core: a tiny C ABI for ctypes (tscli/plugins/core.py).
// Built with: g++ -O3 -shared -fPIC -ffp-contract=off (see core.py for why).
#include <stddef.h>
#include <stdint.h>

#include <new>
#include <vector>

#include "ats_sampling_core.h"
#include "ats_sampling_fast.h"

extern "C" {

// Bumped whenever a signature below changes, so a stale cached library is never called.
int tscli_ats_abi_version(void) { return 3; }

// Error codes (also decoded in core.py).
enum { kOk = 0, kBadShape = 1, kBadScheme = 2, kNoMemory = 3 };

// scores float32 [B, N], valid uint8 [B, N] (0/1), index int32 [B, K+1], mask uint8 [B, K+1],
// margin float32 [B] or NULL. Row-major and contiguous. Returns an error code.
int tscli_ats_sample_batch(const float* scores, const uint8_t* valid, int64_t batch, int64_t n, int64_t k,
                           int scheme, int32_t* index, uint8_t* mask, float* margin) {
  if (batch < 0 || n < 0 || k < 1 || n > (1 << 24) || k > (1 << 24)) return kBadShape;
  if (!tscli::ats::is_valid_scheme(scheme)) return kBadScheme;
  std::vector<float> scratch;
  try {
    scratch.resize(static_cast<size_t>(tscli::ats::ats_scratch_floats(static_cast<int>(n), static_cast<int>(k))));
  } catch (...) {
    return kNoMemory;
  }
  for (int64_t b = 0; b < batch; ++b) {
    const float m = tscli::ats::ats_sample_one(scores + b * n, valid + b * n, static_cast<int>(n),
                                               static_cast<int>(k), scheme, scratch.data(),
                                               index + b * (k + 1), mask + b * (k + 1), margin != nullptr);
    if (margin != nullptr) margin[b] = m;
  }
  return kOk;
}

// The same contract through ats_sample_fast_batch, the ONNX Runtime op's own loop; no margins.
int tscli_ats_sample_batch_fast(const float* scores, const uint8_t* valid, int64_t batch, int64_t n, int64_t k,
                                int scheme, int32_t* index, uint8_t* mask) {
  if (batch < 0 || n < 0 || k < 1 || n > (1 << 24) || k > (1 << 24)) return kBadShape;
  if (!tscli::ats::is_valid_scheme(scheme)) return kBadScheme;
  try {
    tscli::ats::ats_sample_fast_batch(scores, valid, batch, static_cast<int>(n), static_cast<int>(k), scheme, index,
                                      mask);
  } catch (const std::bad_alloc&) {
    return kNoMemory;
  }
  return kOk;
}

}  // extern "C"
