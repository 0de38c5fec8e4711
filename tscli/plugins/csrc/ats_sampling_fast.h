// ATS token picking on a CPU, bit-identical to ats_sample_one and ~6x faster: the ONNX Runtime
// op's path (ats_ort_ops.cpp) and the CPU library's fast entry point (ats_sampling_cpu.cpp).
//
// ats_sample_one (ats_sampling_core.h) is laid out for a CUDA block, one thread per token or
// point. Run serially, its rank/CDF stage is N sequential dependency chains of N float adds and
// its cell stage compares every position with every point: ~75 us per 197-token image at K=99
// (g++ -O3), as much as the ~50 standard ONNX operators it replaces. Two stages change here, not
// their arithmetic:
//  * rank/CDF: the loops are swapped (outer over i, inner over j), so the compiler vectorises
//    over j while each j still adds its "before" scores in token order, one float add at a time,
//    exactly as stage_order does; "not before" adds 0 * s_i, which changes nothing while s_i is
//    finite (x + 0 == x);
//  * cells: with non-negative scores the CDF ascends in sorted order, so the upper cell bounds
//    ascend like the points, and one merge counts the points at or below each bound (the same
//    comparisons stage_cells makes, minus the ones whose answer is already known).
// Both premises hold for finite, non-negative scores, which is what the exported graphs feed
// (attention probability times a value norm). An image with any other valid score (negative,
// infinite, NaN) runs the core's own two stages instead, so the result is the core's for every
// input. Every other stage is the core's own function. tests/test_plugins_core.py checks that
// both paths give the same slots, including on inputs that take the fallback.
#pragma once

#include <float.h>
#include <stddef.h>
#include <stdint.h>

#include <type_traits>
#include <vector>

#include "ats_sampling_core.h"

namespace tscli {
namespace ats {

// order_swapped reproduces stage_order's float sums only when they are float sums.
static_assert(std::is_same<ATS_ACCUM_T, float>::value, "ats_sampling_fast.h needs ATS_ACCUM_T = float");

// Rank and CDF of every token, the same values as stage_order(s, valid, n, rank, cdf, 0, 1) when
// every valid s is finite.
inline void order_swapped(const float* __restrict__ s, const uint8_t* __restrict__ valid, int n,
                          float* __restrict__ rank, float* __restrict__ cdf) {
  for (int j = 0; j < n; ++j) {
    rank[j] = 0.0f;
    cdf[j] = 0.0f;  // the running "before" sum until the last line
  }
  for (int i = 0; i < n; ++i) {
    if (!valid[i]) continue;
    const float si = s[i];
    for (int j = 0; j < n; ++j) {
      const float sj = s[j];
      // 1 when i comes before j. Multiplying by it is exact (si * 1 or si * 0), and no branch
      // is left, so the loop vectorises.
      const float before = static_cast<float>((si < sj) | ((si == sj) & (i < j)));
      cdf[j] += mul_rn(before, si);
      rank[j] += before;  // exact: small integers
    }
  }
  for (int j = 0; j < n; ++j) cdf[j] = add_rn(s[j], cdf[j]);
}

// cell[r] as stage_cells computes it, by one merge of ascending points and ascending bounds.
inline void cells_merged(const float* sorted, int k, int scheme, const float* stats, float* cell) {
  const int n_valid = static_cast<int>(stats[kValid]);
  int below = 0;
  float point = sample_point(0, k, scheme, stats);
  for (int r = 0; r + 1 < n_valid; ++r) {
    const float upper = mul_rn(add_rn(sorted[r], sorted[r + 1]), 0.5f);
    while (below < k && point <= upper) {
      ++below;
      if (below < k) point = sample_point(below, k, scheme, stats);
    }
    cell[r] = static_cast<float>(below);
  }
  if (n_valid > 0) cell[n_valid - 1] = static_cast<float>(k);
}

// True when both premises above hold: every valid score finite and >= 0, and their sum finite.
inline bool fast_path_applies(const float* scores, const uint8_t* valid, int n, const float* stats) {
  const float total = stats[kTotal];
  if (!(total <= FLT_MAX)) return false;  // also false for NaN
  for (int j = 0; j < n; ++j) {
    if (valid[j] && !(scores[j] >= 0.0f && scores[j] <= FLT_MAX)) return false;
  }
  return true;
}

// ats_sample_one without margins; `scratch` holds ats_scratch_floats(n, k) floats.
inline void ats_sample_fast(const float* scores, const uint8_t* valid, int n, int k, int scheme, float* scratch,
                            int32_t* index, uint8_t* mask) {
  Scratch w = split_scratch(scratch, n);
  stage_total(scores, valid, n, w.stats);
  const bool fast = fast_path_applies(scores, valid, n, w.stats);
  stage_normalise(scores, valid, n, w.stats, w.s, w.keep, 0, 1);
  if (fast) {
    order_swapped(w.s, valid, n, w.rank, w.cdf);
  } else {
    stage_order(w.s, valid, n, w.rank, w.cdf, 0, 1);
  }
  stage_axis(valid, n, k, scheme, w.cdf, w.stats);
  stage_sort(w.cdf, w.rank, valid, n, w.sorted, 0, 1);
  if (fast) {
    cells_merged(w.sorted, k, scheme, w.stats, w.cell);
  } else {
    stage_cells(w.sorted, k, scheme, w.stats, w.cell, 0, 1);
  }
  stage_owned(w.sorted, w.stats, w.cell);
  stage_keep(w.rank, valid, n, w.cell, w.stats, w.keep, 0, 1);
  stage_slots(w.keep, n, k, index, mask);
}

// A batch of rows [batch, n] -> index/mask [batch, k + 1]; the one loop both callers run. The
// caller checks the shapes (1 <= k, n and k within int). Throws std::bad_alloc.
inline void ats_sample_fast_batch(const float* scores, const uint8_t* valid, int64_t batch, int n, int k, int scheme,
                                  int32_t* index, uint8_t* mask) {
  std::vector<float> scratch(static_cast<size_t>(ats_scratch_floats(n, k)));
  for (int64_t b = 0; b < batch; ++b) {
    ats_sample_fast(scores + b * n, valid + b * n, n, k, scheme, scratch.data(), index + b * (k + 1),
                    mask + b * (k + 1));
  }
}

}  // namespace ats
}  // namespace tscli
