// The loss options in the CUDA tile kernels (supcon_kernels.cuh): the denominator modes
// ('one_positive', 'only_negatives') and the cap on positives. supcon_fast/reference.py is the
// specification, docs/design.md ("Denominator modes, positives cap, queue") the math; the CPU op
// (csrc/cpu/supcon_cpu_options.cpp) applies the same rule.
//
// Column j of anchor a's row (j != a) is in one set: negative (another class), positive, or excluded
// (a same-class sample past the cap: neither positive nor negative). The cap needs only each row's
// sample rank within its class (O(N) state): a same-class column is kept when it is the anchor's own
// sample (equal rank) or among the first `cap` other samples. The rule is not symmetric, so the
// backward classifies each element twice (row anchor and column anchor).
//
// Statistics per anchor:
//   'all' / 'only_negatives': lse over the denominator set (negatives, plus positives for 'all'),
//     the positives' statistics and count as with the default sets.
//   'one_positive': a first pass gives nl, the log-sum-exp over the negatives (the 'only_negatives'
//     set), and the count; a second pass sums over the positives, given nl: 'out' acc1 = sum
//     softplus(nl - s), acc2 = sum sigmoid(nl - s); 'in' acc1 = sum sigmoid(s - nl), acc2 = sum
//     sigmoid'(s - nl). The second finalize turns them into loss, pos_term and coef.
// Backward, per anchor (the host prepares them: supcon_cuda.cu): gd scales the denominator set's
// softmax term, gp the positives' term; H's share of anchor a at column j is
//   [j in the denominator] gd exp(s - lse) - [j positive] gp w(s), with
//   w = 1 ('out'), exp(s - pv) ('in', pv = pos_term); 'one_positive': sigmoid(nl - s) ('out') or
//   sigmoid(s - nl) sigmoid(nl - s) ('in'), nl = lse.
#pragma once

#include <cstdint>

#include "../denominator.h"
#include "supcon_engines.cuh"

namespace supcon_fast {
namespace SUPCON_CUDA_NS {

enum ColumnSet : int { kSetExcluded = 0, kSetNegative = 1, kSetPositive = 2 };

// Which columns are positives and which enter the denominator.
struct SetRule {
  const label_t* rank = nullptr;  // [R] sample rank within its class (reference.cap_ranks), or none
  int64_t cap = -1;               // other samples kept as positives; -1: no cap
  int den = kDenAll;              // Denominator (supcon.h)

  __device__ __forceinline__ label_t rank_of(int64_t row) const { return rank != nullptr ? rank[row] : 0; }
  // Column (label yj, rank rj) in the sets of an anchor (label ya, rank ra); j != a.
  __device__ __forceinline__ int classify(label_t ya, label_t ra, label_t yj, label_t rj) const {
    if (yj != ya) return kSetNegative;
    const bool keep = rank == nullptr || rj == ra || rj < cap + (rj > ra ? 1 : 0);
    return keep ? kSetPositive : kSetExcluded;
  }
  __device__ __forceinline__ bool in_denominator(int set) const {
    return set == kSetNegative || (den == kDenAll && set == kSetPositive);
  }
};

template <typename T>
__device__ __forceinline__ T dev_sigmoid(T x) {  // 1 / (1 + exp(-x)): 0 at -inf, 1 at +inf, no NaN
  return T(1) / (T(1) + dev_exp(-x));
}
__device__ __forceinline__ float dev_softplus(float x) { return fmaxf(x, 0.f) + log1pf(expf(-fabsf(x))); }
__device__ __forceinline__ double dev_softplus(double x) { return fmax(x, 0.0) + log1p(exp(-fabs(x))); }

// The running statistics of one anchor row in the tile kernels' forward (FwdPartial's fields). In the
// 'one_positive' second pass ps and pl carry acc1 and acc2.
template <typename T>
struct OptRowStats {
  T m, l, pm, pl, ps;
  int64_t np;
};

// One anchor row's share of a column tile of S (row Srow, columns c = h, h + step, ... < cols_valid;
// global column c0 + c; the anchor's global row gr, label ya, rank ra).
template <typename T>
__device__ __forceinline__ void opt_fwd_row(OptRowStats<T>& st, const T* Srow, const label_t* clab,
                                            const label_t* crank, int h, int step, int cols_valid, int64_t c0,
                                            int64_t gr, label_t ya, label_t ra, const SetRule& rule, bool vin,
                                            bool second_pass, T nl) {
  const T NEG_INF = dev_neg_inf(T());
  if (second_pass) {  // 'one_positive', given nl: positives are few, one branch each
    for (int c = h; c < cols_valid; c += step) {
      if (c0 + c == gr || rule.classify(ya, ra, clab[c], crank[c]) != kSetPositive) continue;
      const T s = Srow[c];
      if (vin) {
        st.ps += dev_sigmoid(s - nl);
        st.pl += dev_sigmoid(s - nl) * dev_sigmoid(nl - s);
      } else {
        st.ps += dev_softplus(nl - s);
        st.pl += dev_sigmoid(nl - s);
      }
    }
    return;
  }
  T tmax = NEG_INF, tpmax = NEG_INF;
  for (int c = h; c < cols_valid; c += step) {
    if (c0 + c == gr) continue;
    const int set = rule.classify(ya, ra, clab[c], crank[c]);
    const T s = Srow[c];
    if (rule.in_denominator(set)) tmax = dev_max(tmax, s);
    if (set == kSetPositive) {
      ++st.np;
      tpmax = dev_max(tpmax, s);
    }
  }
  // The denominator set may be empty where positives are not ('only_negatives' with one class).
  const T mn = dev_max(st.m, tmax), pmn = dev_max(st.pm, tpmax);
  T sum = T(0), psum = T(0);
  for (int c = h; c < cols_valid; c += step) {
    if (c0 + c == gr) continue;
    const int set = rule.classify(ya, ra, clab[c], crank[c]);
    const T s = Srow[c];
    if (mn != NEG_INF && rule.in_denominator(set)) sum += dev_exp(s - mn);
    if (set == kSetPositive) {
      if (vin) psum += dev_exp(s - pmn);  // pmn is finite: a positive is here
      else st.ps += s;
    }
  }
  if (mn != NEG_INF) {
    st.l = st.l * dev_exp(st.m - mn) + sum;
    st.m = mn;
  }
  if (vin && pmn != NEG_INF) {
    st.pl = st.pl * dev_exp(st.pm - pmn) + psum;
    st.pm = pmn;
  }
}

// One anchor's share of H at a column in its set `set` (see the top of this file); the caller skips
// anchors with gd = gp = 0 (no positive).
template <typename T>
__device__ __forceinline__ T opt_h_term(T s, T gd, T lse, T gp, T pv, int set, const SetRule& rule, bool vin) {
  T t = rule.in_denominator(set) ? gd * dev_exp(s - lse) : T(0);
  if (set == kSetPositive) {
    T w;
    if (rule.den == kDenOnePositive) w = vin ? dev_sigmoid(s - lse) * dev_sigmoid(lse - s) : dev_sigmoid(lse - s);
    else w = vin ? dev_exp(s - pv) : T(1);
    t -= gp * w;
  }
  return t;
}

// 'one_positive': merges the second pass's splits (acc1 in ps, acc2 in pl) into loss, pos_term and
// coef (one thread per anchor); npos from the first pass. 'out': loss = acc1 / npos, coef =
// acc2 / npos, pos_term 0; 'in': pos_term = log acc1, loss = log npos - pos_term, coef = acc2 / acc1.
template <class E, class Partial>
__global__ void supcon_fwd_one_positive_finalize_kernel(const Partial* __restrict__ ws, int64_t splits, int64_t M,
                                                        bool variant_in, const int64_t* __restrict__ npos,
                                                        typename E::st_t* __restrict__ loss,
                                                        typename E::st_t* __restrict__ pos,
                                                        typename E::st_t* __restrict__ coef) {
  using st_t = typename E::st_t;
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= M) return;
  st_t acc1 = 0, acc2 = 0;
  for (int64_t s = 0; s < splits; ++s) {
    acc1 += ws[s * M + i].ps;
    acc2 += ws[s * M + i].pl;
  }
  const int64_t np = npos[i];
  st_t l = 0, pt = 0, cf = 0;
  if (np > 0 && variant_in) {
    pt = dev_log(acc1);
    l = dev_log(st_t(np)) - pt;
    cf = acc2 / acc1;
  } else if (np > 0) {
    l = acc1 / st_t(np);
    cf = acc2 / st_t(np);
  }
  loss[i] = l;
  pos[i] = pt;
  coef[i] = cf;
}

}  // namespace SUPCON_CUDA_NS
}  // namespace supcon_fast
