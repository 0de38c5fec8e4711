// ATS token picking for one image on a CPU, bit-identical to ats_sample_one and ~10x faster:
// the ONNX Runtime custom op's path.
//
// ats_sample_one (ats_sampling_core.h) is laid out for a CUDA block, one thread per token or
// point. Run serially, its rank/CDF stage is N sequential dependency chains of N float adds and
// its cell stage compares every position with every point: ~130 us per 197-token image, as much
// as the ~50 standard ONNX operators it replaces. Two stages change here, not their arithmetic:
//  * rank/CDF: the loops are swapped (outer over i, inner over j), so the compiler vectorises
//    over j while each j still adds its "before" scores in token order, one float add at a time,
//    exactly as stage_order does (adding 0.0f for "not before" changes nothing: x + 0 == x);
//  * cells: points and upper cell bounds both ascend, so one merge counts the points at or
//    below each bound (the same comparisons stage_cells makes, minus the ones whose answer
//    is already known).
// Every other stage is the core's own function. tests/test_plugins_core.py checks that both
// paths give the same slots on every test vector.
#pragma once

#include <stdint.h>

#include <vector>

#include "ats_sampling_core.h"

namespace tscli {
namespace ats {

// Rank and CDF of every token, the same values as stage_order(s, valid, n, rank, cdf, 0, 1).
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

// ats_sample_one without margins; `scratch` holds ats_scratch_floats(n, k) floats.
inline void ats_sample_fast(const float* scores, const uint8_t* valid, int n, int k, int scheme, float* scratch,
                            int32_t* index, uint8_t* mask) {
  Scratch w = split_scratch(scratch, n);
  stage_total(scores, valid, n, w.stats);
  stage_normalise(scores, valid, n, w.stats, w.s, w.keep, 0, 1);
  order_swapped(w.s, valid, n, w.rank, w.cdf);
  stage_axis(valid, n, k, scheme, w.cdf, w.stats);
  stage_sort(w.cdf, w.rank, valid, n, w.sorted, 0, 1);
  cells_merged(w.sorted, k, scheme, w.stats, w.cell);
  stage_owned(w.sorted, w.stats, w.cell);
  stage_keep(w.rank, valid, n, w.cell, w.keep, 0, 1);
  stage_slots(w.keep, n, k, index, mask);
}

}  // namespace ats
}  // namespace tscli
