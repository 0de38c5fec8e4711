// ATS token picking for one image (docs/design.md, ATS steps 2-6, plus the slot layout).
//
// The single implementation shared by the CPU library (ats_sampling_cpu.cpp), the CUDA kernel
// (ats_sampling_kernels.cu) and therefore the TensorRT plugin. It mirrors
// tscli/models/sampling.py function by function so that float32 results agree with the PyTorch
// reference; the tests in tests/test_plugins_core.py hold it to that.
//
// Structure: the work is split into "stages". A stage either runs over tokens/points with a
// (first, stride) loop, so the host calls it with (0, 1) and a CUDA block with
// (threadIdx.x, blockDim.x), or is marked SINGLE (one thread, O(N)). A CUDA caller must put a
// __syncthreads() between stages; ats_sample_one() below is the serial driver.
//
// Numerics (why the helpers below exist):
//  * Every per-token value is float32, like the exported graph.
//  * Sums (the normaliser, and the CDF's "sum of the scores sorted before me") are accumulated
//    sequentially in token-index order in ATS_ACCUM_T = float. Measured against torch 2.14 CPU
//    float32 on 39,200 random vectors: this order reproduced the reference everywhere except 2
//    near-ties, while exact (double) accumulation differed on 141, 2 of them with margins above
//    1e-6 (sequential float error over 196 terms reaches ~1e-6). -DATS_ACCUM_T=double exists
//    for experiments. The order is the same on host and device, so CPU and CUDA agree bit-wise.
//  * nvcc contracts a*b+c into an FMA by default, which changes roundings. Device code therefore
//    uses the explicit round-to-nearest intrinsics, which are never contracted; the host build
//    passes -ffp-contract=off.
//
// No allocation: the caller passes `scratch` of ats_scratch_floats(n, k) floats.
#pragma once

#include <stdint.h>

#ifdef __CUDACC__
#define ATS_HD __host__ __device__ __forceinline__
#else
#define ATS_HD inline
#endif

#ifndef ATS_ACCUM_T
#define ATS_ACCUM_T float
#endif

namespace tscli {
namespace ats {

// Must match tscli.export.contract.SCHEMES (the code is the position there).
enum Scheme : int { kPaper = 0, kOfficial = 1 };

// Distances live in [0, 1]; kFar means "no candidate" (same constant as the reference's _FAR).
constexpr float kFar = 4.0f;

// Slots of the per-image statistics block at the end of the scratch buffer.
// kNoOrder: 1 when a valid score is +inf (then S holds NaN and the reference's CDF is NaN everywhere).
enum Stat : int { kTotal = 0, kUniform = 1, kY0 = 2, kStep = 3, kValid = 4, kNoOrder = 5, kNumStats = 6 };

ATS_HD bool is_valid_scheme(int scheme) { return scheme == kPaper || scheme == kOfficial; }

// Scratch layout: s[n] | cdf[n] | rank[n] | keep[n] | sorted[n] | cell[n] | stats[kNumStats].
// K does not need space (points are computed on the fly) but stays in the signature so callers
// need not change if it ever does.
constexpr int kFloatsPerToken = 6;
ATS_HD int ats_scratch_floats(int n, int /*k*/) { return kFloatsPerToken * n + kNumStats; }

struct Scratch {
  float* s;      // normalised scores S_j
  float* cdf;    // CDF value of token j (then the axis value the points are compared with)
  float* rank;   // stable ascending rank of token j among valid tokens (exact small integers)
  float* keep;    // 1 when some point picked token j
  float* sorted;  // axis values in ascending (rank) order, valid tokens only
  float* cell;    // per sorted position: points at or below its upper cell bound, then owned points
  float* stats;   // kNumStats scalars
};

ATS_HD Scratch split_scratch(float* base, int n) {
  Scratch w;
  w.s = base;
  w.cdf = base + n;
  w.rank = base + 2 * n;
  w.keep = base + 3 * n;
  w.sorted = base + 4 * n;
  w.cell = base + 5 * n;
  w.stats = base + kFloatsPerToken * n;
  return w;
}

// ---- round-to-nearest float arithmetic that no compiler may fuse ------------------------------
ATS_HD float add_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

ATS_HD float sub_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

ATS_HD float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

ATS_HD float div_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

ATS_HD float abs_f(float a) { return a < 0.0f ? -a : a; }

// ---- stage 1 (SINGLE): normaliser -------------------------------------------------------------
// stats[kTotal] = sum of valid scores (rounded once), stats[kUniform] = 1 / max(valid count, 1).
ATS_HD void stage_total(const float* scores, const uint8_t* valid, int n, float* stats) {
  ATS_ACCUM_T total = 0;
  int n_valid = 0;
  bool pos_inf = false;
  for (int j = 0; j < n; ++j) {
    if (valid[j]) {
      total += static_cast<ATS_ACCUM_T>(scores[j]);
      pos_inf = pos_inf || (scores[j] > 0.0f && scores[j] - scores[j] != 0.0f);  // +inf (inf - inf is NaN)
      ++n_valid;
    }
  }
  stats[kTotal] = static_cast<float>(total);
  // S_j = inf / inf is NaN for an infinite score; the reference's CDF (a MatMul with S) is then NaN
  // at every token and no point finds a nearest one: only CLS is kept (stage_keep).
  stats[kNoOrder] = pos_inf && static_cast<float>(total) > 0.0f ? 1.0f : 0.0f;
  stats[kUniform] = div_rn(1.0f, static_cast<float>(n_valid > 0 ? n_valid : 1));
  stats[kValid] = static_cast<float>(n_valid);
}

// ---- stage 2 (strided over tokens): S_j; uniform over valid tokens when all scores are zero ---
// `scores` may alias `s` (the CUDA kernel stages converted scores there).
ATS_HD void stage_normalise(const float* scores, const uint8_t* valid, int n, const float* stats, float* s,
                            float* keep, int first, int stride) {
  const float total = stats[kTotal];
  for (int j = first; j < n; j += stride) {
    float v = 0.0f;
    if (valid[j]) v = total > 0.0f ? div_rn(scores[j], total) : stats[kUniform];
    s[j] = v;
    keep[j] = 0.0f;
  }
}

// ---- stage 3 (strided over tokens): stable rank and CDF ---------------------------------------
// Token i comes before j when valid and (S_i < S_j, or S_i == S_j and i < j): a stable ascending
// sort without sorting. CDF_j = S_j + sum of the S_i before j, as in the reference.
ATS_HD void stage_order(const float* s, const uint8_t* valid, int n, float* rank, float* cdf, int first,
                        int stride) {
  for (int j = first; j < n; j += stride) {
    const float sj = s[j];
    ATS_ACCUM_T before_sum = 0;
    int before_count = 0;
    for (int i = 0; i < n; ++i) {
      const float si = s[i];
      if (valid[i] && (si < sj || (si == sj && i < j))) {
        before_sum += static_cast<ATS_ACCUM_T>(si);
        ++before_count;
      }
    }
    rank[j] = static_cast<float>(before_count);
    cdf[j] = add_rn(sj, static_cast<float>(before_sum));
  }
}

// ---- stage 4 (SINGLE): the axis the points live on --------------------------------------------
// paper: the CDF itself, nothing to do. official: min-max normalised CDF over valid tokens
// (rewritten in place), y0 = smallest positive value (clamped to 1), step of linspace(y0, 1, K).
ATS_HD void stage_axis(const uint8_t* valid, int n, int k, int scheme, float* cdf, float* stats) {
  stats[kY0] = 0.0f;
  stats[kStep] = 0.0f;
  if (scheme != kOfficial) return;
  float lo = kFar, hi = -kFar;
  for (int j = 0; j < n; ++j) {
    if (!valid[j]) continue;
    lo = cdf[j] < lo ? cdf[j] : lo;
    hi = cdf[j] > hi ? cdf[j] : hi;
  }
  float span = sub_rn(hi, lo);
  span = span > 0.0f ? span : 1.0f;
  float y0 = kFar;
  for (int j = 0; j < n; ++j) {
    const float v = div_rn(sub_rn(cdf[j], lo), span);
    cdf[j] = v;
    if (valid[j] && v > 0.0f && v < y0) y0 = v;
  }
  y0 = y0 < 1.0f ? y0 : 1.0f;
  const float km1 = static_cast<float>(k - 1 > 1 ? k - 1 : 1);
  stats[kY0] = y0;
  stats[kStep] = div_rn(sub_rn(1.0f, y0), km1);
}

ATS_HD float sample_point(int i, int k, int scheme, const float* stats) {
  if (scheme == kOfficial) return add_rn(stats[kY0], mul_rn(static_cast<float>(i), stats[kStep]));
  return div_rn(static_cast<float>(2 * i + 1), static_cast<float>(2 * k));
}

// ---- stage 5 (strided over tokens): the axis values in sorted order -----------------------------
// rank is a permutation of 0..n_valid-1 over the valid tokens, so every slot is written once.
ATS_HD void stage_sort(const float* axis, const float* rank, const uint8_t* valid, int n, float* sorted,
                       int first, int stride) {
  for (int j = first; j < n; j += stride) {
    if (valid[j]) sorted[static_cast<int>(rank[j])] = axis[j];
  }
}

// ---- stage 6 (strided over sorted positions): cells --------------------------------------------
// The points nearest to sorted position r are those in its cell (mid(c[r-1], c[r]), mid(c[r],
// c[r+1])]; a point on a midpoint is equally near both and goes to the lower position, as the
// rule says. cell[r] = number of points at or below the upper bound (all K for the last one).
// Same float operations as tscli.models.sampling.cell_picks.
ATS_HD void stage_cells(const float* sorted, int k, int scheme, const float* stats, float* cell, int first,
                        int stride) {
  const int n_valid = static_cast<int>(stats[kValid]);
  for (int r = first; r < n_valid; r += stride) {
    int below = k;
    if (r + 1 < n_valid) {
      const float upper = mul_rn(add_rn(sorted[r], sorted[r + 1]), 0.5f);
      below = 0;
      for (int p = 0; p < k; ++p) below += sample_point(p, k, scheme, stats) <= upper ? 1 : 0;
    }
    cell[r] = static_cast<float>(below);
  }
}

// ---- stage 7 (SINGLE): points owned by each sorted position ------------------------------------
// Points inside a cell = difference of consecutive counts. Equal axis values share one cell,
// owned by the lowest position: the only such run is the valid tokens with score 0, which sort
// first (every positive score raises the CDF; see cell_picks), so their points go to position 0.
ATS_HD void stage_owned(const float* sorted, const float* stats, float* cell) {
  const int n_valid = static_cast<int>(stats[kValid]);
  float run = 0.0f;
  for (int r = n_valid - 1; r >= 1; --r) {
    const float inside = cell[r] - cell[r - 1];  // exact: small integers
    const bool repeat = sorted[r] == sorted[r - 1];
    cell[r] = repeat ? 0.0f : inside;
    run += repeat ? inside : 0.0f;
  }
  if (n_valid > 0) cell[0] += run;
}

// ---- stage 8 (strided over tokens): keep flags --------------------------------------------------
ATS_HD void stage_keep(const float* rank, const uint8_t* valid, int n, const float* cell, const float* stats,
                       float* keep, int first, int stride) {
  const bool ordered = stats[kNoOrder] == 0.0f;
  for (int j = first; j < n; j += stride) {
    keep[j] = ordered && valid[j] && cell[static_cast<int>(rank[j])] > 0.0f ? 1.0f : 0.0f;
  }
}

// ---- optional (strided over points): decision margin --------------------------------------------
// The literal rule's view of how close each point's decision was: the gap between the nearest
// and the second-nearest distance (invalid tokens count as kFar, as in the reference's
// nearest_picks). kFar + kFar is returned when the caller had no point. Only for diagnostics:
// the decisions above do not use it.
ATS_HD float stage_margin(const float* axis, const uint8_t* valid, int n, int k, int scheme, const float* stats,
                          int first, int stride) {
  float margin = kFar + kFar;
  for (int p = first; p < k; p += stride) {
    const float point = sample_point(p, k, scheme, stats);
    float best = kFar, second = kFar;
    for (int j = 0; j < n; ++j) {
      if (!valid[j]) continue;
      const float d = abs_f(sub_rn(axis[j], point));
      if (d < best) {
        second = best;
        best = d;
      } else if (d < second) {
        second = d;
      }
    }
    const float gap = sub_rn(second, best);
    margin = gap < margin ? gap : margin;
  }
  return margin;
}

// ---- stage 9 (SINGLE): slot layout ------------------------------------------------------------
// Slot 0 = CLS (index 0, mask 1); slots 1..K' = kept candidates in ascending position order
// (index = position + 1, since position 0 of the block input is CLS); the rest index 0, mask 0.
ATS_HD void stage_slots(const float* keep, int n, int k, int32_t* index, uint8_t* mask) {
  index[0] = 0;
  mask[0] = 1;
  int slot = 1;
  for (int j = 0; j < n && slot <= k; ++j) {
    if (keep[j] != 0.0f) {
      index[slot] = j + 1;
      mask[slot] = 1;
      ++slot;
    }
  }
  for (; slot <= k; ++slot) {
    index[slot] = 0;
    mask[slot] = 0;
  }
}

// Serial driver: the whole picking for one image. index/mask hold k + 1 entries. Returns the
// smallest decision margin when `with_margin` (0 when the image has no valid token, like the
// reference), else 0.
ATS_HD float ats_sample_one(const float* scores, const uint8_t* valid, int n, int k, int scheme,
                            float* scratch, int32_t* index, uint8_t* mask, bool with_margin) {
  Scratch w = split_scratch(scratch, n);
  stage_total(scores, valid, n, w.stats);
  stage_normalise(scores, valid, n, w.stats, w.s, w.keep, 0, 1);
  stage_order(w.s, valid, n, w.rank, w.cdf, 0, 1);
  stage_axis(valid, n, k, scheme, w.cdf, w.stats);
  stage_sort(w.cdf, w.rank, valid, n, w.sorted, 0, 1);
  stage_cells(w.sorted, k, scheme, w.stats, w.cell, 0, 1);
  stage_owned(w.sorted, w.stats, w.cell);
  stage_keep(w.rank, valid, n, w.cell, w.stats, w.keep, 0, 1);
  stage_slots(w.keep, n, k, index, mask);
  return with_margin ? stage_margin(w.cdf, valid, n, k, scheme, w.stats, 0, 1) : 0.0f;
}

}  // namespace ats
}  // namespace tscli
