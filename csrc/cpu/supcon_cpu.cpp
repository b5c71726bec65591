// Fused SupCon loss on the CPU: tiled, never materializes the N x N logits.
//
// The logits are visited tile by tile (kRowTile anchors x kColTile contrast rows). Each tile is one
// BLAS call into a fixed workspace, then an elementwise pass over its rows; both use all cores (the
// BLAS's own threads, then at::parallel_for over rows). Tiles run one after the other, so no BLAS call
// is ever nested in a parallel region (nested BLAS threads oversubscribe the cores), and memory is
// O((M + N) * D) plus the workspace. Forward keeps an online running max and sum per anchor (any
// temperature and unnormalized inputs stay finite) and saves only the per-anchor LSE; backward
// recomputes each tile from it.
//
// fp64 inputs run in fp64; fp32 runs in fp32 with fp64 running sums; fp16/bf16 are upcast to fp32
// once (O(N * D)) and their gradient cast back.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <memory>
#include <unordered_map>
#include <vector>

#include "../supcon.h"
#include "rows.h"
#include "tiles.h"

namespace supcon_fast {
namespace {

using cpu::dense_classes;
using cpu::DenseClasses;
using cpu::kColTile;
using cpu::kRowGrain;
using cpu::kRowTile;
using cpu::RunningLSE;
using cpu::tile_logits;

// Per-class sums of rows of x (fp64, for an exact 'out' positive term): [C, D].
template <typename scalar_t>
std::vector<double> class_sums(const scalar_t* x, int64_t rows, int64_t d, const int64_t* cid,
                               int64_t num_classes, const double* row_weight = nullptr) {
  std::vector<double> sums(static_cast<size_t>(num_classes * d), 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    const double w = row_weight ? row_weight[r] : 1.0;
    if (w == 0.0) continue;
    double* dst = sums.data() + cid[r] * d;
    const scalar_t* src = x + r * d;
    for (int64_t k = 0; k < d; ++k) dst[k] += w * static_cast<double>(src[k]);
  }
  return sums;
}

// Folds tile rows [r0, r1) (anchors i0 + r, logits buf [mr, nc] for contrast rows j0..j0+nc) into
// the anchors' running LSE, and the positives' running LSE for 'in'.
template <typename scalar_t>
SUPCON_MULTIVERSION void fwd_tile_rows(scalar_t* buf, int64_t nc, int64_t r0, int64_t r1, int64_t i0, int64_t j0,
                                       int64_t offset, const int64_t* cid, bool variant_in, RunningLSE* all,
                                       RunningLSE* positive) {
  constexpr scalar_t kNegInf = -std::numeric_limits<scalar_t>::infinity();
  scalar_t pbuf[kColTile];
  for (int64_t r = r0; r < r1; ++r) {
    scalar_t* v = buf + r * nc;
    const int64_t i = i0 + r, a = offset + i;
    if (a >= j0 && a < j0 + nc) v[a - j0] = kNegInf;  // no self-contrast
    all[i].add(v, nc);
    if (variant_in) {
      cpu::row_select_class(v, cid + j0, cid[a], nc, pbuf);
      positive[i].add(pbuf, nc);
    }
  }
}

template <typename scalar_t>
void fwd_impl(const at::Tensor& z, const DenseClasses& cls, int64_t offset, int64_t num_anchors,
              double temperature, bool variant_in, scalar_t* loss, scalar_t* lse, scalar_t* pos,
              int64_t* npos) {
  const int64_t n = z.size(0), d = z.size(1);
  const scalar_t* zp = z.data_ptr<scalar_t>();
  const int64_t* cid = cls.id.data();
  const double inv_t = 1.0 / temperature;
  std::vector<RunningLSE> all(num_anchors), positive(variant_in ? num_anchors : 0);
  std::unique_ptr<scalar_t[]> buf(new scalar_t[kRowTile * kColTile]);  // uninitialized: every use writes first
  for (int64_t i0 = 0; i0 < num_anchors; i0 += kRowTile) {
    const int64_t mr = std::min(kRowTile, num_anchors - i0);
    const auto anchors = z.narrow(0, offset + i0, mr);
    for (int64_t j0 = 0; j0 < n; j0 += kColTile) {
      const int64_t nc = std::min(kColTile, n - j0);
      tile_logits(anchors, z.narrow(0, j0, nc), inv_t, buf.get());
      at::parallel_for(0, mr, kRowGrain, [&](int64_t r0, int64_t r1) {
        fwd_tile_rows<scalar_t>(buf.get(), nc, r0, r1, i0, j0, offset, cid, variant_in, all.data(), positive.data());
      });
    }
  }
  std::vector<double> csum;
  if (!variant_in) csum = class_sums(zp, n, d, cid, static_cast<int64_t>(cls.count.size()));
  at::parallel_for(0, num_anchors, 64, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t a = offset + i;
      const int64_t np = cls.count[cid[a]] - 1;
      const double lse_i = all[i].value();
      double pos_i = variant_in ? positive[i].value() : 0.0;
      if (!variant_in && np > 0) {  // mean positive logit from the class sum: z_a . (C_y - z_a) / (T |P|)
        const double* c_y = csum.data() + cid[a] * d;
        const scalar_t* za = zp + a * d;
        double dot = 0;
        for (int64_t k = 0; k < d; ++k) dot += static_cast<double>(za[k]) * (c_y[k] - za[k]);
        pos_i = dot * inv_t / static_cast<double>(np);
      }
      npos[i] = np;
      lse[i] = static_cast<scalar_t>(lse_i);
      pos[i] = static_cast<scalar_t>(pos_i);
      const double l = lse_i - pos_i + (variant_in ? std::log(static_cast<double>(np)) : 0.0);
      loss[i] = static_cast<scalar_t>(np > 0 ? l : 0.0);
    }
  });
}

// Per-anchor statistics the backward needs, with anchors outside the loss neutralized: g = 0 and
// finite lse, pos (so that 0 * exp(v - lse) stays 0).
template <typename scalar_t>
struct AnchorStats {
  const scalar_t* g;    // [M] upstream gradient, 0 where the anchor has no positive
  const scalar_t* lse;  // [M]
  const scalar_t* pos;  // [M] ('in': log-sum-exp of positives; unused for 'out')
  const int64_t* cid;   // [N] dense class of each row of z
  int64_t offset;
  bool variant_in;
};

// dL/ds for tile rows [r0, r1) into h. Anchor-side tiles (rows = anchors i0 + r, columns = contrast
// rows j0 + c): the row term, plus the column term when anchors are the whole contrast set
// (symmetric: H = G + G^T from one tile). Contrast-side tiles (rows = contrast j0 + r, columns =
// anchors i0 + c): the column term only.
template <typename scalar_t>
SUPCON_MULTIVERSION void bwd_tile_rows(const scalar_t* buf, scalar_t* h, int64_t nc, int64_t r0, int64_t r1,
                                       int64_t i0, int64_t j0, bool anchor_rows, bool symmetric,
                                       const AnchorStats<scalar_t>& st) {
  for (int64_t r = r0; r < r1; ++r) {
    const scalar_t* v = buf + r * nc;
    scalar_t* hr = h + r * nc;
    if (anchor_rows) {
      const int64_t i = i0 + r, a = st.offset + i;
      cpu::row_grad(v, nc, st.g[i], st.lse[i], st.pos[i], symmetric ? st.g + j0 : nullptr, st.lse + j0,
                    st.pos + j0, st.variant_in, st.cid + j0, st.cid[a], hr);
      if (a >= j0 && a < j0 + nc) hr[a - j0] = 0;  // no self-contrast
    } else {
      const int64_t j = j0 + r;
      cpu::row_grad(v, nc, scalar_t(0), scalar_t(0), scalar_t(0), st.g + i0, st.lse + i0, st.pos + i0,
                    st.variant_in, st.cid + st.offset + i0, st.cid[j], hr);
      const int64_t i_self = j - st.offset;  // contrast row j is anchor i_self's own row
      if (i_self >= i0 && i_self < i0 + nc) hr[i_self - i0] = 0;
    }
  }
}

// grad[rows] += H(rows x cols) cols / T over all tiles, rows and cols being row ranges of z.
// Anchor side: rows = anchors, cols = the contrast set. Contrast side: the other way round.
// Contrast side: only the rows of acc (z's rows; the queue's get no gradient).
template <typename scalar_t>
void bwd_pass(const at::Tensor& z, const AnchorStats<scalar_t>& st, int64_t num_anchors, double inv_t,
              bool anchor_rows, bool symmetric, const at::Tensor& acc) {
  const int64_t n = z.size(0);
  const int64_t row_base = anchor_rows ? st.offset : 0, num_rows = anchor_rows ? num_anchors : acc.size(0);
  const int64_t col_base = anchor_rows ? 0 : st.offset, num_cols = anchor_rows ? n : num_anchors;
  std::unique_ptr<scalar_t[]> buf(new scalar_t[kRowTile * kColTile]), h(new scalar_t[kRowTile * kColTile]);
  for (int64_t r0 = 0; r0 < num_rows; r0 += kRowTile) {
    const int64_t mr = std::min(kRowTile, num_rows - r0);
    const auto rows = z.narrow(0, row_base + r0, mr);
    auto acc_rows = acc.narrow(0, r0, mr);
    for (int64_t c0 = 0; c0 < num_cols; c0 += kColTile) {
      const int64_t nc = std::min(kColTile, num_cols - c0);
      const auto cols = z.narrow(0, col_base + c0, nc);
      tile_logits(rows, cols, inv_t, buf.get());
      // anchor side: i0 = r0 (anchor index), j0 = c0 (row of z); contrast side: i0 = c0, j0 = r0
      const int64_t i0 = anchor_rows ? r0 : c0, j0 = anchor_rows ? c0 : r0;
      at::parallel_for(0, mr, kRowGrain, [&](int64_t a, int64_t b) {
        bwd_tile_rows<scalar_t>(buf.get(), h.get(), nc, a, b, i0, j0, anchor_rows, symmetric, st);
      });
      acc_rows.addmm_(at::from_blob(h.get(), {mr, nc}, z.options()), cols, 1, inv_t);
    }
  }
}

template <typename scalar_t>
void bwd_logits(const at::Tensor& z, const AnchorStats<scalar_t>& st, int64_t num_anchors, double temperature,
                const at::Tensor& grad) {
  const double inv_t = 1.0 / temperature;
  if (st.offset == 0 && num_anchors == z.size(0)) {  // anchors are the contrast set: one pass
    bwd_pass<scalar_t>(z, st, num_anchors, inv_t, /*anchor_rows=*/true, /*symmetric=*/true, grad);
    return;
  }
  bwd_pass<scalar_t>(z, st, num_anchors, inv_t, /*anchor_rows=*/false, false, grad);
  bwd_pass<scalar_t>(z, st, num_anchors, inv_t, /*anchor_rows=*/true, false, grad.narrow(0, st.offset, num_anchors));
}

// 'out' positive term, O(N * D) with class sums: d(-mean_p s_ip) is -(C_y - z_a) / (T |P|) on the
// anchor's row and -z_a / (T |P|) on each of its positives' rows (grad's rows: the queue's get none).
template <typename scalar_t>
void bwd_out_positives(const at::Tensor& z, const DenseClasses& cls, const scalar_t* g, const int64_t* npos,
                       int64_t offset, int64_t num_anchors, double temperature, const at::Tensor& grad) {
  const int64_t n = z.size(0), d = z.size(1), grad_rows = grad.size(0);
  const scalar_t* zp = z.data_ptr<scalar_t>();
  scalar_t* gp = grad.data_ptr<scalar_t>();
  const int64_t* cid = cls.id.data();
  const int64_t num_classes = static_cast<int64_t>(cls.count.size());
  std::vector<double> w(num_anchors);  // g_i / |P(i)|
  for (int64_t i = 0; i < num_anchors; ++i) w[i] = npos[i] > 0 ? static_cast<double>(g[i]) / npos[i] : 0.0;
  const auto csum = class_sums(zp, n, d, cid, num_classes);
  const auto q = class_sums(zp + offset * d, num_anchors, d, cid + offset, num_classes, w.data());
  const double inv_t = 1.0 / temperature;
  at::parallel_for(0, grad_rows, 256, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      const double* qy = q.data() + cid[j] * d;
      const double* cy = csum.data() + cid[j] * d;
      const scalar_t* zj = zp + j * d;
      scalar_t* gj = gp + j * d;
      const bool is_anchor = j >= offset && j < offset + num_anchors;
      const double wj = is_anchor ? w[j - offset] : 0.0;
      for (int64_t k = 0; k < d; ++k) {
        const double contrast_side = qy[k] - wj * zj[k];  // the other anchors of my class
        const double anchor_side = wj * (cy[k] - zj[k]);   // my positives
        gj[k] -= static_cast<scalar_t>((contrast_side + anchor_side) * inv_t);
      }
    }
  });
}

// z then the queue as one contrast set in the statistics dtype (a copy only where a queue or a
// half dtype needs one).
at::Tensor contrast_set(const at::Tensor& z, const ContrastOptions& opt) {
  const auto dtype = stat_dtype(z);
  if (!opt.queue.defined()) return z.detach().to(dtype).contiguous();
  return at::cat({z.detach().to(dtype), opt.queue.detach().to(dtype)}).contiguous();
}

}  // namespace

FwdOutputs supcon_fwd_cpu(const at::Tensor& z_in, const at::Tensor& labels_in, int64_t offset, int64_t num_anchors,
                          double temperature, bool variant_in, const ContrastOptions& opt) {
  check_fwd_args(z_in, labels_in, offset, num_anchors, temperature, opt.queue_rows());
  at::NoGradGuard no_grad;
  const auto z = contrast_set(z_in, opt);
  if (!opt.default_sets()) return supcon_fwd_cpu_options(z, labels_in, offset, num_anchors, temperature, variant_in, opt);
  auto opts = z.options();
  auto loss = at::empty({num_anchors}, opts), lse = at::empty({num_anchors}, opts);
  auto pos = at::empty({num_anchors}, opts);
  auto npos = at::empty({num_anchors}, opts.dtype(at::kLong));
  auto coef = at::empty({0}, opts);  // 'one_positive' only
  if (num_anchors == 0) return {loss, lse, pos, npos, coef};
  const auto cls = dense_classes(labels_in.contiguous());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "supcon_fwd_cpu", [&] {
    fwd_impl<scalar_t>(z, cls, offset, num_anchors, temperature, variant_in, loss.data_ptr<scalar_t>(),
                       lse.data_ptr<scalar_t>(), pos.data_ptr<scalar_t>(), npos.data_ptr<int64_t>());
  });
  return {loss, lse, pos, npos, coef};
}

at::Tensor supcon_bwd_cpu(const at::Tensor& grad_loss, const at::Tensor& z_in, const at::Tensor& labels_in,
                          const at::Tensor& lse_in, const at::Tensor& pos_in, const at::Tensor& npos_in,
                          int64_t offset, int64_t num_anchors, double temperature, bool variant_in,
                          const ContrastOptions& opt, const at::Tensor& coef) {
  check_bwd_args(grad_loss, z_in, labels_in, lse_in, pos_in, npos_in, offset, num_anchors, temperature,
                 opt.queue_rows());
  at::NoGradGuard no_grad;
  const auto dtype = stat_dtype(z_in);
  const auto z = contrast_set(z_in, opt);
  const int64_t grad_rows = z_in.size(0);
  if (!opt.default_sets())
    return supcon_bwd_cpu_options(grad_loss, z, grad_rows, labels_in, lse_in, pos_in, npos_in, coef, offset,
                                  num_anchors, temperature, variant_in, opt)
        .to(z_in.scalar_type());
  auto grad = at::zeros({grad_rows, z.size(1)}, z.options());
  if (num_anchors == 0 || z.size(0) == 0) return grad.to(z_in.scalar_type());
  // Anchors without a positive are not in the loss: g = 0, and finite stand-ins for their lse/pos.
  const auto valid = npos_in > 0;
  const auto zero = at::zeros({}, z.options());
  const auto g = at::where(valid, grad_loss.detach().to(dtype), zero).contiguous();
  const auto lse = at::where(valid, lse_in.detach().to(dtype), zero).contiguous();
  const auto pos = at::where(valid, pos_in.detach().to(dtype), zero).contiguous();
  const auto npos = npos_in.contiguous();
  const auto cls = dense_classes(labels_in.contiguous());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "supcon_bwd_cpu", [&] {
    const AnchorStats<scalar_t> st{g.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(), pos.data_ptr<scalar_t>(),
                                   cls.id.data(), offset, variant_in};
    bwd_logits<scalar_t>(z, st, num_anchors, temperature, grad);
    if (!variant_in)
      bwd_out_positives<scalar_t>(z, cls, st.g, npos.data_ptr<int64_t>(), offset, num_anchors, temperature, grad);
  });
  return grad.to(z_in.scalar_type());
}

}  // namespace supcon_fast
