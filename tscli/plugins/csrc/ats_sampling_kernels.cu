// CUDA kernels of the ATS plugins. The arithmetic lives in ats_sampling_core.h (shared with the
// CPU build that the tests check against PyTorch); this file only distributes its stages over
// the threads of one block per image and stages the data in shared memory.
#include <cuda_fp16.h>

#include "ats_sampling_core.h"
#include "ats_sampling_kernels.cuh"

namespace tscli {
namespace ats {
namespace {

constexpr size_t kDefaultSharedLimit = 48 * 1024;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

// Shared layout: core scratch floats | one float per thread (margin reduction) | valid bytes.
__host__ __device__ inline size_t shared_floats(int n, int k) {
  return static_cast<size_t>(ats_scratch_floats(n, k)) + kSampleThreads;
}

template <typename T>
__global__ void __launch_bounds__(kSampleThreads)
    ats_sample_kernel(const T* __restrict__ scores, const int32_t* __restrict__ valid, int n, int k, int scheme,
                      int32_t* __restrict__ index, int32_t* __restrict__ mask, float* __restrict__ margin) {
  extern __shared__ float smem[];
  const int tid = threadIdx.x;
  const int nt = blockDim.x;
  const size_t row = blockIdx.x;
  Scratch w = split_scratch(smem, n);
  float* reduce = smem + ats_scratch_floats(n, k);
  uint8_t* valid_s = reinterpret_cast<uint8_t*>(smem + shared_floats(n, k));

  // Stage the row once: every stage below re-reads it O(N) times per token. The core reads
  // valid as 0/1 bytes; any nonzero int32 counts as valid.
  for (int j = tid; j < n; j += nt) {
    w.s[j] = to_float(scores[row * n + j]);
    valid_s[j] = valid[row * n + j] != 0;
  }
  __syncthreads();
  if (tid == 0) stage_total(w.s, valid_s, n, w.stats);
  __syncthreads();
  stage_normalise(w.s, valid_s, n, w.stats, w.s, w.keep, tid, nt);
  __syncthreads();
  stage_order(w.s, valid_s, n, w.rank, w.cdf, tid, nt);
  __syncthreads();
  if (tid == 0) stage_axis(valid_s, n, k, scheme, w.cdf, w.stats);
  __syncthreads();
  stage_sort(w.cdf, w.rank, valid_s, n, w.sorted, tid, nt);
  __syncthreads();
  stage_cells(w.sorted, k, scheme, w.stats, w.cell, tid, nt);
  __syncthreads();
  if (tid == 0) stage_owned(w.sorted, w.stats, w.cell);
  __syncthreads();
  stage_keep(w.rank, valid_s, n, w.cell, w.stats, w.keep, tid, nt);
  if (margin != nullptr) {  // the same branch for every thread of the block
    reduce[tid] = stage_margin(w.cdf, valid_s, n, k, scheme, w.stats, tid, nt);
    __syncthreads();
    for (int half = nt / 2; half > 0; half /= 2) {  // min is exact: the order does not matter
      if (tid < half && reduce[tid + half] < reduce[tid]) reduce[tid] = reduce[tid + half];
      __syncthreads();
    }
  } else {
    __syncthreads();
  }
  if (tid == 0) {
    const size_t slots = static_cast<size_t>(k) + 1;
    int32_t* mask_row = mask + row * slots;
    // The core writes the mask as k + 1 bytes. Let it write them into the front of this row's
    // int32 mask, then widen in place from the last slot down: int32 slot s covers bytes
    // 4s..4s+3, which for s >= 1 all lie above byte s (already widened), and byte 0 is read
    // before slot 0 is written. One thread, O(k): negligible next to the O(n^2) stage_order.
    uint8_t* mask_bytes = reinterpret_cast<uint8_t*>(mask_row);
    stage_slots(w.keep, n, k, index + row * slots, mask_bytes);
    for (int s = k; s >= 0; --s) {
      const int32_t flag = mask_bytes[s];
      mask_row[s] = flag;
    }
    if (margin != nullptr) margin[row] = reduce[0];
  }
}

template <typename T>
__global__ void token_gather_kernel(const T* __restrict__ x, const int32_t* __restrict__ index, int tokens,
                                    int slots, int dim, T* __restrict__ out) {
  const size_t flat = blockIdx.x;  // b * slots + s
  const size_t b = flat / slots;
  const int32_t t = index[flat];
  T* dst = out + flat * dim;
  if (t < 0 || t >= tokens) {
    for (int d = threadIdx.x; d < dim; d += blockDim.x) dst[d] = T(0.0f);
    return;
  }
  const T* src = x + (b * tokens + t) * dim;
  for (int d = threadIdx.x; d < dim; d += blockDim.x) dst[d] = src[d];
}

}  // namespace

size_t sample_shared_bytes(int n, int k) { return shared_floats(n, k) * sizeof(float) + static_cast<size_t>(n); }

int sample_max_tokens() {
  // kFloatsPerToken floats + 1 byte per token, plus the fixed part.
  const size_t fixed = sample_shared_bytes(0, 1);
  return static_cast<int>((kDefaultSharedLimit - fixed) / (kFloatsPerToken * sizeof(float) + 1));
}

cudaError_t launch_ats_sample(const void* scores, ElemType score_type, const int32_t* valid, int batch, int n,
                              int k, int scheme, int32_t* index, int32_t* mask, float* margin,
                              cudaStream_t stream) {
  if (batch < 0 || n < 0 || k < 1 || n > sample_max_tokens() || !is_valid_scheme(scheme)) {
    return cudaErrorInvalidValue;
  }
  if (batch == 0) return cudaSuccess;
  const size_t shared = sample_shared_bytes(n, k);
  const dim3 grid(static_cast<unsigned>(batch));
  if (score_type == ElemType::kFloat16) {
    ats_sample_kernel<__half><<<grid, kSampleThreads, shared, stream>>>(
        static_cast<const __half*>(scores), valid, n, k, scheme, index, mask, margin);
  } else {
    ats_sample_kernel<float><<<grid, kSampleThreads, shared, stream>>>(
        static_cast<const float*>(scores), valid, n, k, scheme, index, mask, margin);
  }
  return cudaGetLastError();
}

cudaError_t launch_token_gather(const void* x, ElemType type, const int32_t* index, int batch, int tokens,
                                int slots, int dim, void* out, cudaStream_t stream) {
  if (batch < 0 || tokens < 1 || slots < 0 || dim < 0) return cudaErrorInvalidValue;
  if (batch == 0 || slots == 0 || dim == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(static_cast<size_t>(batch) * slots));
  const int threads = dim >= 256 ? 256 : ((dim + 31) / 32) * 32;
  if (type == ElemType::kFloat16) {
    token_gather_kernel<__half><<<grid, threads, 0, stream>>>(static_cast<const __half*>(x), index, tokens, slots,
                                                              dim, static_cast<__half*>(out));
  } else {
    token_gather_kernel<float><<<grid, threads, 0, stream>>>(static_cast<const float*>(x), index, tokens, slots,
                                                             dim, static_cast<float*>(out));
  }
  return cudaGetLastError();
}

}  // namespace ats
}  // namespace tscli
