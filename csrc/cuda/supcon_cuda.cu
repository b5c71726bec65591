// CUDA implementation of supcon_fast::supcon_fwd / supcon_bwd (schemas in csrc/ops.cpp, contract
// in csrc/supcon.h and docs/design.md). Kernels: supcon_kernels.cuh.
//
// dtypes: fp16 / bf16 run on tensor cores (WMMA, fp32 accumulation, fp32 statistics); fp32 runs the
// FFMA engine (true fp32 products and sums: no TF32, so it keeps fp32 accuracy); fp64 runs the same
// FFMA engine in fp64 (slow, for checking).
//
// This host code is compiled twice: by nvcc for the device (registered for the CUDA dispatch key
// below), and as plain C++ with SUPCON_EMULATION by csrc/emu/supcon_emu.cpp, where the same
// planning and launches run the kernels on CPU tensors under the emulation (device_api.cuh holds
// the few calls that differ).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <tuple>
#include <type_traits>

#include "../supcon.h"
#include "device_api.cuh"
#include "supcon_kernels.cuh"

namespace supcon_fast {
namespace SUPCON_CUDA_NS {
namespace {

template <typename scalar_t> struct EngineFor;
template <> struct EngineFor<at::Half> { using type = TcEngine<__half>; };
template <> struct EngineFor<at::BFloat16> { using type = TcEngine<__nv_bfloat16>; };
template <> struct EngineFor<float> { using type = SimtEngine<float>; };
template <> struct EngineFor<double> { using type = SimtEngine<double>; };

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Column splits so that small row counts still fill the GPU: about two blocks per SM.
// Returns {splits, tiles_per_split} with no empty split.
std::pair<int64_t, int64_t> plan_splits(int64_t row_blocks, int64_t col_tiles) {
  const int64_t target = 2 * static_cast<int64_t>(sm_count());
  int64_t splits = std::max<int64_t>(1, ceil_div(target, std::max<int64_t>(row_blocks, 1)));
  splits = std::min<int64_t>({splits, std::max<int64_t>(col_tiles, 1), 65535});
  const int64_t per = ceil_div(std::max<int64_t>(col_tiles, 1), splits);
  return {ceil_div(std::max<int64_t>(col_tiles, 1), per), per};
}

template <class E>
std::string kernel_name(const char* kernel) {
  return std::string(kernel) + "<" + E::kName + ">";
}

bool vec_ok(const at::Tensor& z) {
  return z.size(1) % 8 == 0 && reinterpret_cast<std::uintptr_t>(z.data_ptr()) % 16 == 0;
}

template <typename scalar_t>
void launch_fwd(const at::Tensor& z, const at::Tensor& labels, int64_t offset, int64_t M, double temperature,
                bool variant_in, const at::Tensor& npos, at::Tensor& loss, at::Tensor& lse, at::Tensor& pos) {
  using E = typename EngineFor<scalar_t>::type;
  using st_t = typename E::st_t;
  using raw_t = typename E::raw_t;
  const int64_t N = z.size(0), D = z.size(1);
  const int64_t row_blocks = ceil_div(M, E::BM);
  TORCH_CHECK(row_blocks <= INT32_MAX, "supcon_fwd (CUDA): too many anchors: ", M);
  const auto [splits, per] = plan_splits(row_blocks, ceil_div(N, E::BN));
  at::Tensor ws = empty_output({splits, M, 4}, lse.options());

  FwdParams<E> p;
  p.z = reinterpret_cast<const raw_t*>(z.data_ptr());
  p.labels = labels.data_ptr<int64_t>();
  p.N = N;
  p.D = D;
  p.offset = offset;
  p.M = M;
  p.tiles_per_split = per;
  p.inv_t = static_cast<st_t>(1.0 / temperature);
  p.variant_in = variant_in;
  p.vec = vec_ok(z);
  p.ws = ws.data_ptr<st_t>();

  constexpr int smem = SmemLayout<E>::fwd_bytes;
  set_smem(supcon_fwd_tile_kernel<E>, smem, "supcon_fwd");
  launch(supcon_fwd_tile_kernel<E>, kernel_name<E>("supcon_fwd_tile_kernel"),
         dim3(static_cast<unsigned>(row_blocks), static_cast<unsigned>(splits)), dim3(E::NT), smem, E::NT, p);
  launch(supcon_fwd_finalize_kernel<st_t>, kernel_name<E>("supcon_fwd_finalize_kernel"),
         dim3(static_cast<unsigned>(ceil_div(M, 256))), dim3(256), 0, 0, p.ws, splits, M,
         static_cast<const int64_t*>(npos.data_ptr<int64_t>()), variant_in, loss.data_ptr<st_t>(),
         lse.data_ptr<st_t>(), pos.data_ptr<st_t>());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> supcon_fwd_cuda(const at::Tensor& z_in,
                                                                           const at::Tensor& labels_in,
                                                                           int64_t offset, int64_t num_anchors,
                                                                           double temperature, bool variant_in) {
  check_fwd_args(z_in, labels_in, offset, num_anchors, temperature);
  TORCH_CHECK(on_device(z_in), "supcon_fwd (", kBackend, "): z is on ", z_in.device());
  const DeviceGuard guard(z_in.device());
  const int64_t M = num_anchors;
  const auto fopts = z_in.options().dtype(stat_dtype(z_in));
  at::Tensor loss = at::zeros({M}, fopts);
  at::Tensor lse = empty_output({M}, fopts);
  at::Tensor pos = empty_output({M}, fopts);
  if (M == 0) return {loss, lse, pos, at::zeros({0}, z_in.options().dtype(at::kLong))};

  const at::Tensor z = z_in.contiguous();
  const at::Tensor labels = labels_in.contiguous();
  // npos_i = |{j != a : y_j == y_a}| = (size of a's class) - 1, from the class counts.
  const auto uniq = at::_unique2(labels, /*sorted=*/false, /*return_inverse=*/true, /*return_counts=*/true);
  const at::Tensor npos =
      (std::get<2>(uniq).index_select(0, std::get<1>(uniq).reshape({-1}).narrow(0, offset, M)) - 1).contiguous();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "supcon_fwd_cuda", [&] {
    launch_fwd<scalar_t>(z, labels, offset, M, temperature, variant_in, npos, loss, lse, pos);
  });
  return {loss, lse, pos, npos};
}

at::Tensor supcon_bwd_cuda(const at::Tensor& grad_loss, const at::Tensor& z_in, const at::Tensor& labels_in,
                           const at::Tensor& lse_in, const at::Tensor& pos_in, const at::Tensor& npos_in,
                           int64_t offset, int64_t num_anchors, double temperature, bool variant_in) {
  check_bwd_args(grad_loss, z_in, labels_in, lse_in, pos_in, npos_in, offset, num_anchors, temperature);
  TORCH_CHECK(on_device(z_in), "supcon_bwd (", kBackend, "): z is on ", z_in.device());
  const DeviceGuard guard(z_in.device());
  const int64_t N = z_in.size(0), D = z_in.size(1), M = num_anchors;
  if (M == 0 || N == 0 || D == 0) return at::zeros({N, D}, z_in.options());

  const at::Tensor z = z_in.contiguous();
  const at::Tensor labels = labels_in.contiguous();
  const auto st = stat_dtype(z);
  const at::Tensor npos = npos_in.contiguous();
  const at::Tensor has_pos = npos > 0;
  // g_i = grad_loss_i where anchor i has a positive, else 0 (its loss is the constant 0).
  const at::Tensor g = at::where(has_pos, grad_loss.to(st), at::zeros({}, z.options().dtype(st))).contiguous();
  const at::Tensor lse = lse_in.to(st).contiguous();
  // aux: pos_term ('in') or 1/npos ('out'; the positive part of G is -g/npos on every positive).
  const at::Tensor aux =
      variant_in ? pos_in.to(st).contiguous()
                 : at::where(has_pos, npos.clamp_min(1).to(st).reciprocal(), at::zeros({}, z.options().dtype(st))).contiguous();
  const at::Tensor gmax = at::amax(g.abs()).to(at::kFloat);  // 0-dim, device; read by the TC kernels

  at::Tensor grad;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "supcon_bwd_cuda", [&] {
    using E = typename EngineFor<scalar_t>::type;
    using st_t = typename E::st_t;
    // One launch over all N rows (see the kernel): rows holding an anchor walk every column, the
    // others only the anchor columns. Column splits only when there are too few row blocks.
    const int64_t row_blocks = ceil_div(N, E::BM);
    TORCH_CHECK(row_blocks <= INT32_MAX, "supcon_bwd (CUDA): too many rows: ", N);
    int64_t splits = plan_splits(row_blocks, ceil_div(N, E::BN)).first;
    // Split mode keeps one [N, D] fp32 (fp64) partial per split, summed in a fixed order afterwards
    // (deterministic; atomics are not): cap that workspace at 256 MiB (1 split = direct mode).
    constexpr int64_t kMaxPartBytes = int64_t(256) << 20;
    const int64_t slice_bytes = std::max<int64_t>(1, N * D * static_cast<int64_t>(sizeof(st_t)));
    splits = std::max<int64_t>(1, std::min<int64_t>(splits, kMaxPartBytes / slice_bytes));
    BwdParams<E> p;
    p.z = reinterpret_cast<const typename E::raw_t*>(z.data_ptr());
    p.labels = labels.data_ptr<int64_t>();
    p.N = N;
    p.D = D;
    p.offset = offset;
    p.M = M;
    p.splits = splits;
    p.inv_t = static_cast<st_t>(1.0 / temperature);
    p.variant_in = variant_in;
    p.vec = vec_ok(z);
    p.g = g.data_ptr<st_t>();
    p.lse = lse.data_ptr<st_t>();
    p.aux = aux.data_ptr<st_t>();
    p.gmax = gmax.data_ptr<float>();
    at::Tensor part;
    if (splits == 1) {
      // Every grad row is owned by one block and every element written once: no accumulator.
      grad = empty_output({N, D}, z.options());
      p.grad_out = reinterpret_cast<typename E::in_t*>(grad.data_ptr());
      p.grad_part = nullptr;
    } else {
      part = at::zeros({splits, N, D}, z.options().dtype(st));
      p.grad_out = nullptr;
      p.grad_part = part.data_ptr<st_t>();
    }
    constexpr int smem = SmemLayout<E>::bwd_bytes;
    set_smem(supcon_bwd_tile_kernel<E>, smem, "supcon_bwd");
    launch(supcon_bwd_tile_kernel<E>, kernel_name<E>("supcon_bwd_tile_kernel"),
           dim3(static_cast<unsigned>(row_blocks), static_cast<unsigned>(splits)), dim3(E::NT), smem, E::NT, p);
    if (splits != 1) grad = part.sum(0).to(z.scalar_type());  // fixed-order reduction over splits
  });
  return grad;
}

}  // namespace SUPCON_CUDA_NS
}  // namespace supcon_fast

#ifndef SUPCON_EMULATION
TORCH_LIBRARY_IMPL(supcon_fast, CUDA, m) {
  m.impl("supcon_fwd", &supcon_fast::cuda::supcon_fwd_cuda);
  m.impl("supcon_bwd", &supcon_fast::cuda::supcon_bwd_cuda);
}
#endif
