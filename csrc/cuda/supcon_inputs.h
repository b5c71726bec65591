// Host-side preparation of the CUDA kernels' inputs (supcon_cuda.cu): the dense class ids the kernels
// compare, the fp64 class sums of the 'out' positive term (capped for the loss options, whose kernels
// are in supcon_options.cuh), and the options' backward inputs. ATen calls only (device tensors in,
// device tensors out, no host synchronization).
#pragma once

#include <ATen/ATen.h>

#include "../supcon.h"
#include "cuda_compat.cuh"

namespace supcon_fast {
namespace SUPCON_CUDA_NS {
namespace {

// The op's labels [R] (any int64 values) as the kernels and the class sums take them, from one
// stable sort and a scan of the label changes (no data-dependent sizes, so no host synchronization,
// unlike unique): ids, the dense class ids (the number of distinct labels below each one, label_t,
// so that a pair compares in 32 bits); order, the rows in label order (stable); sorted, ids[order].
struct DenseLabels {
  at::Tensor ids, order, sorted;
};
DenseLabels dense_labels(const at::Tensor& labels) {
  const int64_t R = labels.size(0);
  const auto by_label = labels.sort(/*stable=*/true, 0, false);
  const at::Tensor& lab_sorted = std::get<0>(by_label);
  at::Tensor change = at::zeros({R}, labels.options().dtype(at::kInt));
  if (R > 1) change.narrow(0, 1, R - 1).copy_(lab_sorted.narrow(0, 1, R - 1).ne(lab_sorted.narrow(0, 0, R - 1)));
  DenseLabels d{at::empty({R}, labels.options().dtype(at::kInt)), std::get<1>(by_label), change.cumsum(0, at::kInt)};
  d.ids.index_put_({d.order}, d.sorted);
  return d;
}

// For the anchors a = offset .. offset + M - 1: z_a . (C_{y_a} - z_a) in fp64, where C_y is the sum of
// class y's rows over the whole contrast set (the 'out' positive term times T * npos, as the CPU op
// computes it), and npos_a = |class y_a| - 1 (int64). Class sums come from a prefix sum over the rows
// in label order and binary searches (no atomics, so deterministic; no host synchronization). O(R D)
// fp64.
std::tuple<at::Tensor, at::Tensor> class_stats(const at::Tensor& z, const DenseLabels& labels, int64_t offset,
                                               int64_t M) {
  const int64_t D = z.size(1);
  const at::Tensor z64 = z.to(at::kDouble);
  // prefix[k] = sum of the first k rows in label order (prefix[0] = 0)
  const at::Tensor prefix = at::cat({at::zeros({1, D}, z64.options()), z64.index_select(0, labels.order).cumsum(0)});
  const at::Tensor ya = labels.ids.narrow(0, offset, M);
  const at::Tensor lo = at::searchsorted(labels.sorted, ya, /*out_int32=*/false, /*right=*/false);
  const at::Tensor hi = at::searchsorted(labels.sorted, ya, /*out_int32=*/false, /*right=*/true);
  const at::Tensor za = z64.narrow(0, offset, M);
  const at::Tensor others = prefix.index_select(0, hi) - prefix.index_select(0, lo) - za;  // C_y - z_a
  return {(za * others).sum(1).contiguous(), (hi - lo - 1).contiguous()};  // the anchor is in its class
}

// class_stats' dots under a cap of `cap` samples: z_a . (K_a - z_a), K_a the sum of the rows kept as
// a's positives or a itself, in fp64. Kept (supcon_options.cuh): the rows of a's class whose sample
// rank is below the cap, plus the rows of rank r* = max(rank_a, cap) (a's own sample, or the one more
// the cap allows when a is among the first). Sums over (class, rank) ranges come from a prefix sum
// over the rows sorted by the key class id * (R + 1) + rank: a sort, a scan and binary searches, no
// host synchronization.
at::Tensor capped_class_sum_dots(const at::Tensor& z, const DenseLabels& labels, const at::Tensor& rank, int64_t cap,
                                 int64_t offset, int64_t M) {
  const int64_t R = z.size(0), D = z.size(1);
  const at::Tensor base = labels.ids.to(at::kLong) * (R + 1);  // each row's class id * (R + 1)
  const at::Tensor key = base + rank.to(at::kLong);
  const auto by_key = key.sort(/*stable=*/true, 0, false);
  const at::Tensor& keys = std::get<0>(by_key);
  const at::Tensor z64 = z.to(at::kDouble);
  const at::Tensor prefix = at::cat({at::zeros({1, D}, z64.options()), z64.index_select(0, std::get<1>(by_key)).cumsum(0)});
  const at::Tensor ya = base.narrow(0, offset, M);
  const at::Tensor rstar = rank.narrow(0, offset, M).to(at::kLong).clamp_min(cap);
  auto at_key = [&](const at::Tensor& k, bool right) {
    return prefix.index_select(0, at::searchsorted(keys, k, /*out_int32=*/false, right));
  };
  const at::Tensor za = z64.narrow(0, offset, M);
  const at::Tensor kept = (at_key(ya + cap, false) - at_key(ya, false)) +
                          (at_key(ya + rstar, true) - at_key(ya + rstar, false)) - za;
  return (za * kept).sum(1).contiguous();
}

// The options' per-anchor backward inputs (supcon_options.cuh) from the forward's statistics, 0 (and
// finite) where the anchor has no positive: gd, gp, pv in the statistics dtype.
struct OptionStats {
  at::Tensor gd, gp, pv, lse;
};
OptionStats option_stats(const at::Tensor& g, const at::Tensor& has_pos, const at::Tensor& npos, const at::Tensor& lse_in,
                         const at::Tensor& pos_in, const at::Tensor& coef_in, bool variant_in, const ContrastOptions& opt) {
  const auto st = g.scalar_type();
  const at::Tensor zero = at::zeros({}, g.options());
  const auto clean = [&](const at::Tensor& t) { return at::where(has_pos, t.to(st), zero).contiguous(); };
  const at::Tensor inv_np = npos.clamp_min(1).to(st).reciprocal();
  const at::Tensor pos = clean(pos_in);
  OptionStats o;
  o.lse = clean(lse_in);
  if (opt.denominator == kDenOnePositive) {
    TORCH_CHECK(coef_in.defined() && coef_in.dim() == 1 && coef_in.size(0) == g.size(0),
                "supcon_bwd: denominator 'one_positive' needs coef, [M] = [", g.size(0), "] from supcon_fwd");
    o.gd = clean(g * coef_in.to(st));
    o.gp = clean(variant_in ? g * (-pos).exp() : g * inv_np);
    o.pv = at::zeros_like(g);
  } else {
    o.gd = g.contiguous();
    o.gp = clean(variant_in ? g : g * inv_np);
    o.pv = variant_in ? pos : at::zeros_like(g);
  }
  return o;
}

}  // namespace
}  // namespace SUPCON_CUDA_NS
}  // namespace supcon_fast
