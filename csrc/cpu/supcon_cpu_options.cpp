// Fused SupCon loss on the CPU for the official implementation's options: the denominator modes
// ('one_positive', 'only_negatives') and the cap on positives (supcon_fast/reference.py is the
// specification). Same tiling as supcon_cpu.cpp (one BLAS call per logits tile, then a parallel pass
// over its rows, never the N x N matrix), but no class-sum shortcut: a capped class is not a sum.
//
// Each column j of anchor a's row is in one set: excluded (j == a, or a same-class sample past the
// cap), negative (another class) or positive. The cap needs only each row's sample rank within its
// class (O(N) state, reference.cap_ranks): a same-class column is kept when it is the anchor's own
// sample (equal rank) or among the first `cap` other samples (within_cap, the same test).
//
// Statistics per anchor (docs/design.md, "Denominator modes"):
//   'all' / 'only_negatives': lse = log-sum-exp over the denominator set (negatives and positives /
//     negatives only), pos_term as in the default op; loss = lse - pos_term (+ log npos for 'in').
//   'one_positive': a second pass once the negatives' log-sum-exp nl is known. 'out':
//     loss = mean_p softplus(nl - s_p), coef = mean_p sigmoid(nl - s_p); 'in': q = sum_p sigmoid(s_p - nl),
//     loss = log npos - log q, pos_term = log q, coef = sum_p sigmoid'(s_p - nl) / q. coef scales the
//     negatives' gradient, coef * exp(s - nl).
#include <ATen/Parallel.h>

#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "../supcon.h"
#include "rows.h"
#include "tiles.h"

namespace supcon_fast {
namespace {

using namespace cpu;

enum ColumnSet : int8_t { kExcluded = 0, kNegative = 1, kPositive = 2 };

// The sets of anchor a's columns j0 .. j0 + nc - 1 into set[]: branch-free, so that the loop
// vectorizes (the callers are compiled per instruction set, like the default kernel's).
struct SetRule {
  const int64_t* cid;   // [R] dense class ids
  const int64_t* rank;  // [R] sample rank within its class, or nullptr without a cap
  int64_t cap;
  SUPCON_INLINE void row(int64_t a, int64_t j0, int64_t nc, int8_t* set) const {
    const int64_t ya = cid[a], ra = rank ? rank[a] : 0;
    const int64_t* y = cid + j0;
    if (rank == nullptr) {
#pragma omp simd
      for (int64_t c = 0; c < nc; ++c) set[c] = y[c] == ya ? kPositive : kNegative;
    } else {
      const int64_t* r = rank + j0;
#pragma omp simd
      for (int64_t c = 0; c < nc; ++c) {
        const bool keep = r[c] == ra || r[c] < cap + (r[c] > ra ? 1 : 0);
        set[c] = y[c] == ya ? (keep ? kPositive : kExcluded) : kNegative;
      }
    }
    if (a >= j0 && a < j0 + nc) set[a - j0] = kExcluded;  // no self-contrast
  }
};

inline double softplus(double x) { return std::max(x, 0.0) + std::log1p(std::exp(-std::abs(x))); }
inline double sigmoid(double x) {
  if (x >= 0) return 1.0 / (1.0 + std::exp(-x));
  const double e = std::exp(x);
  return e / (1.0 + e);
}

struct RowState {
  RunningLSE den, pos;           // the denominator set; the positives ('in')
  double pos_sum = 0, acc1 = 0, acc2 = 0;
  int64_t npos = 0;
};

struct Problem {
  SetRule rule;
  int64_t offset, denominator;
  bool variant_in;
};

// Pass 1 over one row of a tile: the denominator's and the positives' running sums.
template <typename scalar_t>
SUPCON_INLINE void fwd_row(const scalar_t* v, int64_t nc, int64_t a, int64_t j0, const Problem& p, RowState& st) {
  constexpr scalar_t kNegInf = -std::numeric_limits<scalar_t>::infinity();
  scalar_t den[kColTile], pos[kColTile];
  int8_t set[kColTile];
  p.rule.row(a, j0, nc, set);
  const bool den_pos = p.denominator == kDenAll;
  double psum = 0;  // the 'out' positive term's sum in fp64, as the default kernel's class sums
  int64_t np = 0;
#pragma omp simd reduction(+ : psum, np)
  for (int64_t c = 0; c < nc; ++c) {
    const bool is_pos = set[c] == kPositive;
    den[c] = (set[c] == kNegative || (den_pos && is_pos)) ? v[c] : kNegInf;
    pos[c] = is_pos ? v[c] : kNegInf;
    psum += is_pos ? static_cast<double>(v[c]) : 0.0;
    np += is_pos ? 1 : 0;
  }
  st.den.add(den, nc);
  if (p.variant_in) st.pos.add(pos, nc);
  st.pos_sum += psum;
  st.npos += np;
}

// Pass 2 ('one_positive'): the per-positive terms once the negatives' log-sum-exp nl is known
// (positives are few: scalar fp64 on them).
template <typename scalar_t>
SUPCON_INLINE void one_positive_row(const scalar_t* v, int64_t nc, int64_t a, int64_t j0, const Problem& p,
                                    double nl, RowState& st) {
  int8_t set[kColTile];
  p.rule.row(a, j0, nc, set);
  for (int64_t c = 0; c < nc; ++c) {
    if (set[c] != kPositive) continue;
    if (p.variant_in) {
      const double sg = sigmoid(v[c] - nl);
      st.acc1 += sg, st.acc2 += sg * (1 - sg);
    } else {
      st.acc1 += softplus(nl - v[c]), st.acc2 += sigmoid(nl - v[c]);
    }
  }
}

// The row passes over tile rows [r0, r1), one copy per instruction set.
template <typename scalar_t>
SUPCON_MULTIVERSION void fwd_rows(const scalar_t* b, int64_t nc, int64_t r0, int64_t r1, int64_t i0, int64_t j0,
                                  const Problem& p, RowState* st, bool second_pass) {
  for (int64_t r = r0; r < r1; ++r) {
    RowState& s = st[i0 + r];
    if (second_pass) one_positive_row(b + r * nc, nc, p.offset + i0 + r, j0, p, s.den.value(), s);
    else fwd_row(b + r * nc, nc, p.offset + i0 + r, j0, p, s);
  }
}

// Runs fn(buf, mr, nc, i0, j0) for every logits tile (anchors i0.. x contrast rows j0..) in order.
template <typename scalar_t, class Fn>
void for_each_tile(const at::Tensor& zc, int64_t offset, int64_t num_anchors, double inv_t, scalar_t* buf, Fn&& fn) {
  const int64_t n = zc.size(0);
  for (int64_t i0 = 0; i0 < num_anchors; i0 += kRowTile) {
    const int64_t mr = std::min(kRowTile, num_anchors - i0);
    const auto anchors = zc.narrow(0, offset + i0, mr);
    for (int64_t j0 = 0; j0 < n; j0 += kColTile) {
      const int64_t nc = std::min(kColTile, n - j0);
      tile_logits(anchors, zc.narrow(0, j0, nc), inv_t, buf);
      fn(buf, mr, nc, i0, j0);
    }
  }
}

template <typename scalar_t>
void fwd_options(const at::Tensor& zc, const Problem& p, int64_t num_anchors, double temperature, scalar_t* loss,
                 scalar_t* lse, scalar_t* pos, int64_t* npos, scalar_t* coef) {
  std::vector<RowState> st(num_anchors);
  std::unique_ptr<scalar_t[]> buf(new scalar_t[kRowTile * kColTile]);
  const double inv_t = 1.0 / temperature;
  for_each_tile(zc, p.offset, num_anchors, inv_t, buf.get(), [&](scalar_t* b, int64_t mr, int64_t nc, int64_t i0, int64_t j0) {
    at::parallel_for(0, mr, kRowGrain, [&](int64_t r0, int64_t r1) {
      fwd_rows(b, nc, r0, r1, i0, j0, p, st.data(), /*second_pass=*/false);
    });
  });
  const bool one_positive = p.denominator == kDenOnePositive;
  if (one_positive) {
    for_each_tile(zc, p.offset, num_anchors, inv_t, buf.get(), [&](scalar_t* b, int64_t mr, int64_t nc, int64_t i0, int64_t j0) {
      at::parallel_for(0, mr, kRowGrain, [&](int64_t r0, int64_t r1) {
        fwd_rows(b, nc, r0, r1, i0, j0, p, st.data(), /*second_pass=*/true);
      });
    });
  }
  for (int64_t i = 0; i < num_anchors; ++i) {
    const RowState& s = st[i];
    const double np = static_cast<double>(s.npos);
    const double den = s.den.value();
    double l = 0, pt = 0, cf = 0;
    if (s.npos > 0 && one_positive) {
      pt = p.variant_in ? std::log(s.acc1) : 0.0;
      l = p.variant_in ? std::log(np) - pt : s.acc1 / np;
      cf = p.variant_in ? s.acc2 / s.acc1 : s.acc2 / np;
    } else if (s.npos > 0) {
      pt = p.variant_in ? s.pos.value() : s.pos_sum / np;
      l = den - pt + (p.variant_in ? std::log(np) : 0.0);
    }
    loss[i] = static_cast<scalar_t>(l), lse[i] = static_cast<scalar_t>(den), pos[i] = static_cast<scalar_t>(pt);
    npos[i] = s.npos;
    if (one_positive) coef[i] = static_cast<scalar_t>(cf);
  }
}

// Per-anchor statistics of the backward; g = 0 where the anchor has no positive.
template <typename scalar_t>
struct BwdStats {
  const scalar_t *g, *lse, *pos, *coef;
  const int64_t* npos;
};

// dL/ds for one row of a tile (anchor a, contrast rows j0..j0+nc) into h: branch-free over the
// columns' sets (negatives and, for 'all', positives get the softmax term; positives their own).
template <typename scalar_t>
SUPCON_INLINE void bwd_row(const scalar_t* v, int64_t nc, int64_t a, int64_t i, int64_t j0, const Problem& p,
                           const BwdStats<scalar_t>& st, scalar_t* h) {
  const scalar_t g = st.g[i];
  if (g == 0) {
    for (int64_t c = 0; c < nc; ++c) h[c] = 0;
    return;
  }
  int8_t set[kColTile];
  p.rule.row(a, j0, nc, set);
  const scalar_t lse = st.lse[i], pos = st.pos[i];
  const scalar_t inv_np = scalar_t(1) / static_cast<scalar_t>(std::max<int64_t>(st.npos[i], 1));
  const bool den_pos = p.denominator == kDenAll;
  if (p.denominator != kDenOnePositive) {
    const bool in = p.variant_in;
#pragma omp simd
    for (int64_t c = 0; c < nc; ++c) {
      const bool is_pos = set[c] == kPositive;
      const scalar_t soft = (set[c] == kNegative || (den_pos && is_pos)) ? g * fast_exp(v[c] - lse) : scalar_t(0);
      const scalar_t w = in ? fast_exp(v[c] - pos) : inv_np;
      h[c] = soft - (is_pos ? g * w : scalar_t(0));
    }
    return;
  }
  // 'one_positive': negatives coef * exp(s - nl); positives -(1/|P|) sigmoid(nl - s) ('out') or
  // -sigmoid'(s - nl) / q ('in', q = exp(pos_term))
  const scalar_t neg_scale = g * st.coef[i], pos_scale = p.variant_in ? g * fast_exp(-pos) : g * inv_np;
  const bool in = p.variant_in;
#pragma omp simd
  for (int64_t c = 0; c < nc; ++c) {
    // sigmoid(s - nl) as 1 / (1 + exp(nl - s)): 1 without negatives (nl = -inf), 0 far below nl
    const scalar_t sg = scalar_t(1) / (scalar_t(1) + fast_exp(lse - v[c]));
    const scalar_t w = in ? sg * (scalar_t(1) - sg) : scalar_t(1) - sg;
    h[c] = set[c] == kNegative ? neg_scale * fast_exp(v[c] - lse)
                               : (set[c] == kPositive ? -pos_scale * w : scalar_t(0));
  }
}

template <typename scalar_t>
SUPCON_MULTIVERSION void bwd_rows(const scalar_t* b, int64_t nc, int64_t r0, int64_t r1, int64_t i0, int64_t j0,
                                  const Problem& p, const BwdStats<scalar_t>& st, scalar_t* h) {
  for (int64_t r = r0; r < r1; ++r) bwd_row(b + r * nc, nc, p.offset + i0 + r, i0 + r, j0, p, st, h + r * nc);
}

template <typename scalar_t>
void bwd_options(const at::Tensor& zc, const Problem& p, int64_t num_anchors, double temperature,
                 const BwdStats<scalar_t>& st, const at::Tensor& grad) {
  const int64_t grad_rows = grad.size(0);
  const double inv_t = 1.0 / temperature;
  std::unique_ptr<scalar_t[]> buf(new scalar_t[kRowTile * kColTile]), h(new scalar_t[kRowTile * kColTile]);
  for_each_tile(zc, p.offset, num_anchors, inv_t, buf.get(), [&](scalar_t* b, int64_t mr, int64_t nc, int64_t i0, int64_t j0) {
    at::parallel_for(0, mr, kRowGrain, [&](int64_t r0, int64_t r1) { bwd_rows(b, nc, r0, r1, i0, j0, p, st, h.get()); });
    const auto ht = at::from_blob(h.get(), {mr, nc}, zc.options());
    const auto anchors = zc.narrow(0, p.offset + i0, mr);
    grad.narrow(0, p.offset + i0, mr).addmm_(ht, zc.narrow(0, j0, nc), 1, inv_t);  // anchor side
    const int64_t ng = std::min(nc, grad_rows - j0);                                 // queue rows: no gradient
    if (ng > 0) grad.narrow(0, j0, ng).addmm_(ht.narrow(1, 0, ng).t(), anchors, 1, inv_t);
  });
}

// cap_rank: contiguous [R] (the caller keeps it alive), or undefined without a cap.
Problem make_problem(const DenseClasses& cls, const ContrastOptions& opt, const at::Tensor& cap_rank, int64_t offset,
                     bool variant_in) {
  const int64_t* rank = opt.cap >= 0 ? cap_rank.data_ptr<int64_t>() : nullptr;
  return Problem{SetRule{cls.id.data(), rank, opt.cap}, offset, opt.denominator, variant_in};
}

}  // namespace

FwdOutputs supcon_fwd_cpu_options(const at::Tensor& zc, const at::Tensor& labels, int64_t offset,
                                  int64_t num_anchors, double temperature, bool variant_in,
                                  const ContrastOptions& opt) {
  const auto o = zc.options();
  auto loss = at::empty({num_anchors}, o), lse = at::empty({num_anchors}, o), pos = at::empty({num_anchors}, o);
  auto npos = at::empty({num_anchors}, o.dtype(at::kLong));
  auto coef = at::empty({opt.denominator == kDenOnePositive ? num_anchors : 0}, o);
  if (num_anchors == 0) return {loss, lse, pos, npos, coef};
  const auto cls = dense_classes(labels.contiguous());
  const at::Tensor cap_rank = opt.cap >= 0 ? opt.cap_rank.contiguous() : at::Tensor();
  const Problem p = make_problem(cls, opt, cap_rank, offset, variant_in);
  AT_DISPATCH_FLOATING_TYPES(zc.scalar_type(), "supcon_fwd_cpu_options", [&] {
    fwd_options<scalar_t>(zc, p, num_anchors, temperature, loss.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(),
                          pos.data_ptr<scalar_t>(), npos.data_ptr<int64_t>(),
                          coef.numel() ? coef.data_ptr<scalar_t>() : nullptr);
  });
  return {loss, lse, pos, npos, coef};
}

at::Tensor supcon_bwd_cpu_options(const at::Tensor& grad_loss, const at::Tensor& zc, int64_t grad_rows,
                                  const at::Tensor& labels, const at::Tensor& lse_in, const at::Tensor& pos_in,
                                  const at::Tensor& npos_in, const at::Tensor& coef_in, int64_t offset,
                                  int64_t num_anchors, double temperature, bool variant_in,
                                  const ContrastOptions& opt) {
  auto grad = at::zeros({grad_rows, zc.size(1)}, zc.options());
  if (num_anchors == 0) return grad;
  const bool one_positive = opt.denominator == kDenOnePositive;
  TORCH_CHECK(!one_positive || (coef_in.defined() && coef_in.dim() == 1 && coef_in.size(0) == num_anchors),
              "supcon_bwd: denominator 'one_positive' needs coef, [M] = [", num_anchors, "] from supcon_fwd");
  // Anchors without a positive are not in the loss: g = 0, and finite stand-ins for their statistics.
  const auto valid = npos_in > 0;
  const auto zero = at::zeros({}, zc.options());
  const auto neutral = [&](const at::Tensor& t) { return at::where(valid, t.detach().to(zc.scalar_type()), zero).contiguous(); };
  const auto g = neutral(grad_loss), lse = neutral(lse_in), pos = neutral(pos_in);
  const auto coef = one_positive ? neutral(coef_in) : at::Tensor();
  const auto npos = npos_in.contiguous();
  const auto cls = dense_classes(labels.contiguous());
  const at::Tensor cap_rank = opt.cap >= 0 ? opt.cap_rank.contiguous() : at::Tensor();
  const Problem p = make_problem(cls, opt, cap_rank, offset, variant_in);
  AT_DISPATCH_FLOATING_TYPES(zc.scalar_type(), "supcon_bwd_cpu_options", [&] {
    const BwdStats<scalar_t> st{g.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(), pos.data_ptr<scalar_t>(),
                                one_positive ? coef.data_ptr<scalar_t>() : nullptr, npos.data_ptr<int64_t>()};
    bwd_options<scalar_t>(zc, p, num_anchors, temperature, st, grad);
  });
  return grad;
}

}  // namespace supcon_fast
