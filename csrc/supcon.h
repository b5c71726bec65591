// Shared declarations and argument checks of the supcon_fast ops (CPU and CUDA).
//
// The two ops (schemas in ops.cpp):
//   supcon_fwd(z [N, D], labels [N + K] int64, offset, num_anchors M, temperature, variant_in,
//              queue [K, D]?, denominator, cap_rank [N + K] int64?, cap)
//       -> (loss [M], lse [M], pos_term [M], npos [M] int64, coef [M] or [0])
//   supcon_bwd(grad_loss [M], z, labels, lse, pos_term, npos, offset, M, temperature, variant_in,
//              queue?, denominator, cap_rank?, cap, coef?) -> grad_z [N, D]
// Anchor i is row offset + i of z; the contrast set is all of z then the queue's rows (contrast only:
// no gradient), minus the anchor itself. With the default options (denominator 'all', no cap):
//   loss_i = lse_i - pos_term_i (+ log npos_i for 'in'), 0 where npos_i == 0
//   pos_term_i = mean_{p in P(i)} s_ip ('out')  or  log sum_{p in P(i)} exp(s_ip) ('in')
// The other denominators and the cap (the official implementation's options, supcon_fast/reference.py)
// change the sets and, for 'one_positive', the statistics: docs/design.md, "Denominator modes".
// loss/lse/pos_term/coef are fp64 for fp64 z, fp32 otherwise; grad_z has z's dtype.
#pragma once

#include <torch/types.h>

#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include <string>
#include <tuple>

#include "denominator.h"

namespace supcon_fast {

// The contrast set's options beyond the batch: a queue of contrast-only rows, the denominator mode
// and a cap of `cap` samples on positives, through each row's sample rank within its class.
struct ContrastOptions {
  at::Tensor queue;     // [K, D] z's dtype and device, or undefined (K = 0)
  int64_t denominator = kDenAll;
  at::Tensor cap_rank;  // [N + K] int64 when cap >= 0
  int64_t cap = -1;     // samples besides the anchor's own; -1: no cap
  bool default_sets() const { return denominator == kDenAll && cap < 0; }
  int64_t queue_rows() const { return queue.defined() ? queue.size(0) : 0; }
};

// Checks shared by every backend; messages name the argument and its shape.
inline void check_fwd_args(const at::Tensor& z, const at::Tensor& labels, int64_t offset,
                           int64_t num_anchors, double temperature, int64_t queue_rows = 0) {
  TORCH_CHECK(z.dim() == 2, "supcon_fwd: z must be 2-D [N, D], got shape ", z.sizes());
  TORCH_CHECK(z.scalar_type() == at::kDouble || z.scalar_type() == at::kFloat ||
                  z.scalar_type() == at::kHalf || z.scalar_type() == at::kBFloat16,
              "supcon_fwd: z must be float64, float32, float16 or bfloat16, got ", z.scalar_type());
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == z.size(0) + queue_rows,
              "supcon_fwd: labels must be [N + K] = [", z.size(0) + queue_rows, "] (z's rows, then the queue's), "
              "got shape ", labels.sizes());
  TORCH_CHECK(labels.scalar_type() == at::kLong, "supcon_fwd: labels must be int64, got ",
              labels.scalar_type());
  TORCH_CHECK(labels.device() == z.device(), "supcon_fwd: labels on ", labels.device(),
              " but z on ", z.device());
  TORCH_CHECK(offset >= 0 && num_anchors >= 0 && offset + num_anchors <= z.size(0),
              "supcon_fwd: anchor block [offset, offset + num_anchors) = [", offset, ", ",
              offset + num_anchors, ") must lie inside z's ", z.size(0), " rows");
  TORCH_CHECK(temperature > 0, "supcon_fwd: temperature must be > 0, got ", temperature);
}

inline void check_bwd_args(const at::Tensor& grad_loss, const at::Tensor& z, const at::Tensor& labels,
                           const at::Tensor& lse, const at::Tensor& pos_term, const at::Tensor& npos,
                           int64_t offset, int64_t num_anchors, double temperature, int64_t queue_rows = 0) {
  check_fwd_args(z, labels, offset, num_anchors, temperature, queue_rows);
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"grad_loss", grad_loss},
                                {"lse", lse}, {"pos_term", pos_term}, {"npos", npos}}) {
    TORCH_CHECK(t.dim() == 1 && t.size(0) == num_anchors, "supcon_bwd: ", name, " must be [M] = [",
                num_anchors, "], got shape ", t.sizes());
    TORCH_CHECK(t.device() == z.device(), "supcon_bwd: ", name, " on ", t.device(), " but z on ",
                z.device());
  }
  TORCH_CHECK(npos.scalar_type() == at::kLong, "supcon_bwd: npos must be int64");
}

// The options from the op arguments, checked against z and labels (check_fwd_args first).
inline ContrastOptions contrast_options(const at::Tensor& z, const c10::optional<at::Tensor>& queue,
                                        c10::string_view denominator, const c10::optional<at::Tensor>& cap_rank,
                                        int64_t cap) {
  ContrastOptions o;
  if (queue.has_value() && queue->defined()) {
    o.queue = *queue;
    TORCH_CHECK(o.queue.dim() == 2 && o.queue.size(1) == z.size(1), "supcon_fwd: queue must be [K, D] with D = ",
                z.size(1), ", got shape ", o.queue.sizes());
    TORCH_CHECK(o.queue.scalar_type() == z.scalar_type() && o.queue.device() == z.device(), "supcon_fwd: queue is ",
                o.queue.scalar_type(), " on ", o.queue.device(), " but z is ", z.scalar_type(), " on ", z.device());
  }
  if (denominator == "all") o.denominator = kDenAll;
  else if (denominator == "one_positive") o.denominator = kDenOnePositive;
  else if (denominator == "only_negatives") o.denominator = kDenOnlyNegatives;
  else TORCH_CHECK_VALUE(false, "supcon_fwd: denominator must be 'all', 'one_positive' or 'only_negatives', got '",
                         std::string(denominator), "'");
  TORCH_CHECK_VALUE(cap >= -1, "supcon_fwd: cap must be -1 (no cap) or >= 0 samples, got ", cap);
  o.cap = cap;
  if (cap >= 0) {
    const int64_t rows = z.size(0) + o.queue_rows();
    TORCH_CHECK(cap_rank.has_value() && cap_rank->dim() == 1 && cap_rank->size(0) == rows &&
                    cap_rank->scalar_type() == at::kLong && cap_rank->device() == z.device(),
                "supcon_fwd: a cap needs cap_rank, [N + K] = [", rows, "] int64 on ", z.device());
    o.cap_rank = *cap_rank;
  }
  return o;
}

// Loss/statistics dtype: fp64 stays fp64, everything else accumulates and returns fp32.
inline at::ScalarType stat_dtype(const at::Tensor& z) {
  return z.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// The backends (registered in ops.cpp): the fused CPU op, and the CUDA host code compiled for the
// CPU emulation (csrc/emu/supcon_emu.cpp), which ops.cpp routes CPU calls to inside an emulation
// session.
using FwdOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
FwdOutputs supcon_fwd_cpu(const at::Tensor& z, const at::Tensor& labels, int64_t offset, int64_t num_anchors,
                          double temperature, bool variant_in, const ContrastOptions& opt);
at::Tensor supcon_bwd_cpu(const at::Tensor& grad_loss, const at::Tensor& z, const at::Tensor& labels,
                          const at::Tensor& lse, const at::Tensor& pos_term, const at::Tensor& npos, int64_t offset,
                          int64_t num_anchors, double temperature, bool variant_in, const ContrastOptions& opt,
                          const at::Tensor& coef);
// The fused CPU op for the non-default sets (cpu/supcon_cpu_options.cpp): z and the queue as one
// contrast set zc [R, D] in the statistics dtype, gradient for the first `grad_rows` rows.
FwdOutputs supcon_fwd_cpu_options(const at::Tensor& zc, const at::Tensor& labels, int64_t offset,
                                  int64_t num_anchors, double temperature, bool variant_in,
                                  const ContrastOptions& opt);
at::Tensor supcon_bwd_cpu_options(const at::Tensor& grad_loss, const at::Tensor& zc, int64_t grad_rows,
                                  const at::Tensor& labels, const at::Tensor& lse, const at::Tensor& pos_term,
                                  const at::Tensor& npos, const at::Tensor& coef, int64_t offset, int64_t num_anchors,
                                  double temperature, bool variant_in, const ContrastOptions& opt);
namespace cuda_emu {
FwdOutputs supcon_fwd_cuda(const at::Tensor& z, const at::Tensor& labels, int64_t offset, int64_t num_anchors,
                           double temperature, bool variant_in, const ContrastOptions& opt);
at::Tensor supcon_bwd_cuda(const at::Tensor& grad_loss, const at::Tensor& z, const at::Tensor& labels,
                           const at::Tensor& lse, const at::Tensor& pos_term, const at::Tensor& npos, int64_t offset,
                           int64_t num_anchors, double temperature, bool variant_in, const ContrastOptions& opt,
                           const at::Tensor& coef);
at::Tensor plan_blocks(const std::string& kernel, int64_t N, int64_t M, int64_t offset, int64_t D,
                       at::ScalarType dtype, const std::string& arch, int64_t grad_rows);
}  // namespace cuda_emu

}  // namespace supcon_fast
