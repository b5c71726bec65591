// Shared declarations and argument checks of the supcon_fast ops (CPU and CUDA).
//
// The two ops (schemas in ops.cpp):
//   supcon_fwd(z [N, D], labels [N] int64, offset, num_anchors M, temperature, variant_in)
//       -> (loss [M], lse [M], pos_term [M], npos [M] int64)
//   supcon_bwd(grad_loss [M], z, labels, lse, pos_term, npos, offset, M, temperature, variant_in)
//       -> grad_z [N, D]
// Anchor i is row offset + i of z; the contrast set is all of z, minus the anchor itself.
//   loss_i = lse_i - pos_term_i (+ log npos_i for 'in'), 0 where npos_i == 0
//   pos_term_i = mean_{p in P(i)} s_ip ('out')  or  log sum_{p in P(i)} exp(s_ip) ('in')
// loss/lse/pos_term are fp64 for fp64 z, fp32 otherwise; grad_z has z's dtype.
#pragma once

#include <torch/types.h>

#include <string>
#include <tuple>

namespace supcon_fast {

// Checks shared by every backend; messages name the argument and its shape.
inline void check_fwd_args(const at::Tensor& z, const at::Tensor& labels, int64_t offset,
                           int64_t num_anchors, double temperature) {
  TORCH_CHECK(z.dim() == 2, "supcon_fwd: z must be 2-D [N, D], got shape ", z.sizes());
  TORCH_CHECK(z.scalar_type() == at::kDouble || z.scalar_type() == at::kFloat ||
                  z.scalar_type() == at::kHalf || z.scalar_type() == at::kBFloat16,
              "supcon_fwd: z must be float64, float32, float16 or bfloat16, got ", z.scalar_type());
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == z.size(0),
              "supcon_fwd: labels must be [N] = [", z.size(0), "], got shape ", labels.sizes());
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
                           int64_t offset, int64_t num_anchors, double temperature) {
  check_fwd_args(z, labels, offset, num_anchors, temperature);
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"grad_loss", grad_loss},
                                {"lse", lse}, {"pos_term", pos_term}, {"npos", npos}}) {
    TORCH_CHECK(t.dim() == 1 && t.size(0) == num_anchors, "supcon_bwd: ", name, " must be [M] = [",
                num_anchors, "], got shape ", t.sizes());
    TORCH_CHECK(t.device() == z.device(), "supcon_bwd: ", name, " on ", t.device(), " but z on ",
                z.device());
  }
  TORCH_CHECK(npos.scalar_type() == at::kLong, "supcon_bwd: npos must be int64");
}

// Loss/statistics dtype: fp64 stays fp64, everything else accumulates and returns fp32.
inline at::ScalarType stat_dtype(const at::Tensor& z) {
  return z.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// The backends (registered in ops.cpp): the fused CPU op, and the CUDA host code compiled for the
// CPU emulation (csrc/emu/supcon_emu.cpp), which ops.cpp routes CPU calls to inside an emulation
// session.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> supcon_fwd_cpu(const at::Tensor& z, const at::Tensor& labels,
                                                                          int64_t offset, int64_t num_anchors,
                                                                          double temperature, bool variant_in);
at::Tensor supcon_bwd_cpu(const at::Tensor& grad_loss, const at::Tensor& z, const at::Tensor& labels,
                          const at::Tensor& lse, const at::Tensor& pos_term, const at::Tensor& npos, int64_t offset,
                          int64_t num_anchors, double temperature, bool variant_in);
namespace cuda_emu {
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> supcon_fwd_cuda(const at::Tensor& z, const at::Tensor& labels,
                                                                           int64_t offset, int64_t num_anchors,
                                                                           double temperature, bool variant_in);
at::Tensor supcon_bwd_cuda(const at::Tensor& grad_loss, const at::Tensor& z, const at::Tensor& labels,
                           const at::Tensor& lse, const at::Tensor& pos_term, const at::Tensor& npos, int64_t offset,
                           int64_t num_anchors, double temperature, bool variant_in);
at::Tensor plan_blocks(const std::string& kernel, int64_t N, int64_t M, int64_t offset, int64_t D,
                       at::ScalarType dtype, const std::string& arch);
}  // namespace cuda_emu

}  // namespace supcon_fast
