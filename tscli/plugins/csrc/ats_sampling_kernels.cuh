// CUDA entry points of the ATS plugins: sampling (the core of ats_sampling_core.h, one block per
// image) and the token gather. Plain host functions taking a stream, so the TensorRT glue
// (ats_plugin.cpp) and any other caller stay free of kernel code.
#pragma once

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

namespace tscli {
namespace ats {

enum class ElemType : int { kFloat32 = 0, kFloat16 = 1 };

// Threads per image in the sampling kernel (a power of two: the margin reduction halves it).
constexpr int kSampleThreads = 256;

// Dynamic shared memory the sampling kernel needs for n candidate tokens.
size_t sample_shared_bytes(int n, int k);

// Largest n whose scratch (sample_shared_bytes(n, k), which does not grow with k) fits the
// default 48 KiB of shared memory per block. The TensorRT plugin refuses a profile above it.
int sample_max_tokens();

// scores [batch, n] (float32 or float16), valid int32 [batch, n] (nonzero = valid), for K = k
// points. Writes index int32 [batch, k+1], mask int32 [batch, k+1] (0/1), margin float [batch]
// (optional, may be nullptr). int32 rather than bool bytes because TensorRT plugins may not take
// or produce kBOOL / kUINT8 tensors (PluginTensorDesc, TensorRT 10.0 - 11.x); the picking itself
// (ats_sampling_core.h) is unchanged. scheme: 0 = paper, 1 = official. Returns
// cudaErrorInvalidValue for bad arguments (k < 1, unknown scheme, n > sample_max_tokens()), else
// the launch status.
cudaError_t launch_ats_sample(const void* scores, ElemType score_type, const int32_t* valid, int batch, int n,
                              int k, int scheme, int32_t* index, int32_t* mask, float* margin,
                              cudaStream_t stream);

// out[b, s, :] = x[b, index[b, s], :] for x [batch, tokens, dim] (float32 or float16) and
// index int32 [batch, slots]. An index outside [0, tokens) writes zeros instead of reading out of
// bounds (the sampling plugin never produces one; a hand-made graph might).
cudaError_t launch_token_gather(const void* x, ElemType type, const int32_t* index, int batch, int tokens,
                                int slots, int dim, void* out, cudaStream_t stream);

}  // namespace ats
}  // namespace tscli
