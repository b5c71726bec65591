// CUDA implementation of supcon_fast::supcon_fwd / supcon_bwd (schemas in csrc/ops.cpp, contract
// in csrc/supcon.h and DESIGN.md). Kernels: supcon_kernels.cuh.
//
// dtypes: fp16 / bf16 run on tensor cores (WMMA, fp32 accumulation, fp32 statistics); fp32 runs the
// FFMA engine (true fp32 products and sums: no TF32, so it keeps fp32 accuracy); fp64 runs the same
// FFMA engine in fp64 (slow, for checking).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <type_traits>

#include "../supcon.h"
#include "supcon_kernels.cuh"

namespace supcon_fast {
namespace cuda {
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
  // (c10 only: ATen/cuda/CUDAContext.h would need the cuSPARSE/cuBLAS headers at build time)
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, c10::cuda::current_device()));
  const int64_t target = 2 * static_cast<int64_t>(sms);
  int64_t splits = std::max<int64_t>(1, ceil_div(target, std::max<int64_t>(row_blocks, 1)));
  splits = std::min<int64_t>({splits, std::max<int64_t>(col_tiles, 1), 65535});
  const int64_t per = ceil_div(std::max<int64_t>(col_tiles, 1), splits);
  return {ceil_div(std::max<int64_t>(col_tiles, 1), per), per};
}

// Opts the kernel in to `bytes` of dynamic shared memory (> 48 KB needs it), after checking that the
// device allows that much per block with the kernel's static shared memory (sm_80: 163 KB, sm_90:
// 227 KB; sm_86 / sm_89 only 99 KB, too little for the tensor-core backward).
template <typename K>
void set_smem(K kernel, int bytes, const char* what) {
  int optin = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, c10::cuda::current_device()));
  cudaFuncAttributes attr{};
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
  TORCH_CHECK(static_cast<int64_t>(attr.sharedSizeBytes) + bytes <= optin, what, " (CUDA): the kernel needs ",
              static_cast<int64_t>(attr.sharedSizeBytes) + bytes, " bytes of shared memory per block, this device allows ",
              optin, " (sm_80 / sm_90 class GPUs have enough)");
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
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
  at::Tensor ws = at::empty({splits, M, 4}, lse.options());

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

  auto stream = c10::cuda::getCurrentCUDAStream();
  constexpr int smem = SmemLayout<E>::fwd_bytes;
  set_smem(supcon_fwd_tile_kernel<E>, smem, "supcon_fwd");
  supcon_fwd_tile_kernel<E><<<dim3(static_cast<unsigned>(row_blocks), static_cast<unsigned>(splits)), E::NT, smem,
                              stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  supcon_fwd_finalize_kernel<st_t><<<static_cast<unsigned>(ceil_div(M, 256)), 256, 0, stream>>>(
      p.ws, splits, M, npos.data_ptr<int64_t>(), variant_in, loss.data_ptr<st_t>(), lse.data_ptr<st_t>(),
      pos.data_ptr<st_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> supcon_fwd_cuda(const at::Tensor& z_in,
                                                                           const at::Tensor& labels_in,
                                                                           int64_t offset, int64_t num_anchors,
                                                                           double temperature, bool variant_in) {
  check_fwd_args(z_in, labels_in, offset, num_anchors, temperature);
  TORCH_CHECK(z_in.is_cuda(), "supcon_fwd (CUDA): z must be a CUDA tensor, got ", z_in.device());
  const c10::cuda::CUDAGuard guard(z_in.device());
  const int64_t M = num_anchors;
  const auto fopts = z_in.options().dtype(stat_dtype(z_in));
  at::Tensor loss = at::zeros({M}, fopts);
  at::Tensor lse = at::empty({M}, fopts);
  at::Tensor pos = at::empty({M}, fopts);
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
  TORCH_CHECK(z_in.is_cuda(), "supcon_bwd (CUDA): z must be a CUDA tensor, got ", z_in.device());
  const c10::cuda::CUDAGuard guard(z_in.device());
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
      grad = at::empty({N, D}, z.options());
      p.grad_out = reinterpret_cast<typename E::in_t*>(grad.data_ptr());
      p.grad_part = nullptr;
    } else {
      part = at::zeros({splits, N, D}, z.options().dtype(st));
      p.grad_out = nullptr;
      p.grad_part = part.data_ptr<st_t>();
    }
    constexpr int smem = SmemLayout<E>::bwd_bytes;
    set_smem(supcon_bwd_tile_kernel<E>, smem, "supcon_bwd");
    supcon_bwd_tile_kernel<E><<<dim3(static_cast<unsigned>(row_blocks), static_cast<unsigned>(splits)), E::NT, smem,
                                c10::cuda::getCurrentCUDAStream()>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (splits != 1) grad = part.sum(0).to(z.scalar_type());  // fixed-order reduction over splits
  });
  return grad;
}

}  // namespace cuda
}  // namespace supcon_fast

TORCH_LIBRARY_IMPL(supcon_fast, CUDA, m) {
  m.impl("supcon_fwd", &supcon_fast::cuda::supcon_fwd_cuda);
  m.impl("supcon_bwd", &supcon_fast::cuda::supcon_bwd_cuda);
}
