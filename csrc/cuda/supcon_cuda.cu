// CUDA implementation of supcon_fast::supcon_fwd / supcon_bwd (schemas in csrc/ops.cpp, contract
// in csrc/supcon.h and docs/design.md). Kernels: supcon_kernels.cuh.
//
// dtypes: fp16 / bf16 run on tensor cores (fp32 accumulation, fp32 statistics): with mma.sync on
// register-resident S (and H) tiles for D <= 256 in the forward (supcon_mma_fwd.cuh) and D <= 128 in
// the backward (supcon_mma_bwd.cuh), else with WMMA tile engines; fp32 runs the FFMA engine (true fp32 products and sums: no TF32, so it keeps fp32
// accuracy); fp64 runs the same FFMA engine in fp64 (slow, for checking).
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
#include <vector>

#include "../supcon.h"
#include "device_api.cuh"
#include "supcon_kernels.cuh"
#include "supcon_mma_bwd.cuh"
#include "supcon_mma_fwd.cuh"
#include "supcon_options.cuh"
#include "supcon_inputs.h"

namespace supcon_fast {
namespace SUPCON_CUDA_NS {
namespace {

// Tile configurations per dtype: the default, and a compact one (a smaller D chunk) for the backward
// where the device's opt-in shared memory per block is below what the default needs (99 KB parts:
// sm_86, sm_89, sm_120). The forward fits 99 KB in its default configuration.
template <typename scalar_t> struct EngineFor;
template <> struct EngineFor<at::Half> { using type = TcEngine<__half>; using compact = TcEngine<__half, 64>; };
template <> struct EngineFor<at::BFloat16> {
  using type = TcEngine<__nv_bfloat16>;
  using compact = TcEngine<__nv_bfloat16, 64>;
};
template <> struct EngineFor<float> { using type = SimtEngine<float>; using compact = SimtEngine<float>; };
template <> struct EngineFor<double> { using type = SimtEngine<double>; using compact = SimtEngine<double, 16>; };

using plan::ceil_div;

template <class E>
std::string kernel_name(const char* kernel) {
  return std::string(kernel) + "<" + E::kName + ", BK=" + std::to_string(E::BK) + ">";
}

bool vec_ok(const at::Tensor& z) {
  return z.size(1) % 8 == 0 && reinterpret_cast<std::uintptr_t>(z.data_ptr()) % 16 == 0;
}

// The options with the cap ranks as the kernels index them (label_t, contiguous).
ContrastOptions kernel_options(const ContrastOptions& opt) {
  ContrastOptions o = opt;
  if (o.cap >= 0) o.cap_rank = o.cap_rank.to(at::kInt).contiguous();
  return o;
}

SetRule set_rule(const ContrastOptions& opt) {
  return SetRule{opt.cap >= 0 ? opt.cap_rank.data_ptr<label_t>() : nullptr, opt.cap, static_cast<int>(opt.denominator)};
}

// A forward configuration is an mma.sync one (MmaFwd) or a tile engine; Engine is the tile engine
// whose FwdPartial layout and finalize kernel it uses.
template <class C> struct IsMmaFwd : std::false_type { using Engine = C; };
template <typename T, int DP, bool OPT> struct IsMmaFwd<MmaFwd<T, DP, OPT>> : std::true_type {
  using Engine = typename MmaFwd<T, DP, OPT>::E;
};

// Calls fn(C()) with the forward's kernel configuration for D on a device with `optin` bytes of
// shared memory per block: for fp16 / bf16 the mma.sync kernel with D padded to 64, 128 or 256
// where that fits (its options version for the loss options), else the tile engine's kernel (also for
// fp32 / fp64). The one place that decides.
template <typename scalar_t, class Fn>
void with_fwd_config(int64_t D, int optin, bool options, Fn&& fn) {
  using E = typename EngineFor<scalar_t>::type;
  if constexpr (std::is_same<scalar_t, at::Half>::value || std::is_same<scalar_t, at::BFloat16>::value) {
    using T = typename E::in_t;
    if (options) {
      if (D <= 64 && MmaFwd<T, 64, true>::bytes <= optin) return fn(MmaFwd<T, 64, true>());
      if (D <= 128 && MmaFwd<T, 128, true>::bytes <= optin) return fn(MmaFwd<T, 128, true>());
      if (D <= 256 && MmaFwd<T, 256, true>::bytes <= optin) return fn(MmaFwd<T, 256, true>());
      return fn(E());
    }
    if (D <= 64 && MmaFwd<T, 64>::bytes <= optin) return fn(MmaFwd<T, 64>());
    if (D <= 128 && MmaFwd<T, 128>::bytes <= optin) return fn(MmaFwd<T, 128>());
    if (D <= 256 && MmaFwd<T, 256>::bytes <= optin) return fn(MmaFwd<T, 256>());
  }
  fn(E());
}

// The options of one forward launch of the tile kernels: the sets, and the 'one_positive' pass.
template <typename st_t>
struct FwdPass {
  SetRule rule;
  bool second_pass = false;
  const st_t* nl = nullptr;
};

template <class C, bool OPT>
void launch_fwd_kernel(const at::Tensor& z, const at::Tensor& labels, int64_t offset, int64_t M, double temperature,
                       bool variant_in, const plan::FwdPlan& fp, void* ws,
                       const FwdPass<typename IsMmaFwd<C>::Engine::st_t>& pass) {
  using E = typename IsMmaFwd<C>::Engine;
  const dim3 grid(static_cast<unsigned>(fp.row_blocks), static_cast<unsigned>(fp.splits));
  if constexpr (IsMmaFwd<C>::value) {
    MmaFwdParams<C> p{reinterpret_cast<const uint16_t*>(z.data_ptr()), labels.data_ptr<label_t>(), z.size(0),
                      z.size(1), offset, M, fp.tiles_per_split, static_cast<float>(1.0 / temperature), variant_in,
                      vec_ok(z), static_cast<FwdPartial<E>*>(ws), pass.rule, pass.second_pass, pass.nl};
    set_smem(supcon_fwd_mma_kernel<C>, C::bytes, "supcon_fwd");
    launch(supcon_fwd_mma_kernel<C>, std::string(C::OPT ? "supcon_fwd_mma_kernel[options]<" : "supcon_fwd_mma_kernel<") +
                                         C::kName + ", DP=" + std::to_string(C::DP) + ">",
           grid, dim3(C::NT), C::bytes, C::NT, p);
  } else {
    using st_t = typename E::st_t;
    FwdParams<E> p;
    p.z = reinterpret_cast<const typename E::raw_t*>(z.data_ptr());
    p.labels = labels.data_ptr<label_t>();
    p.N = z.size(0);
    p.D = z.size(1);
    p.offset = offset;
    p.M = M;
    p.tiles_per_split = fp.tiles_per_split;
    p.inv_t = static_cast<st_t>(1.0 / temperature);
    p.variant_in = variant_in;
    p.vec = vec_ok(z);
    p.ws = static_cast<FwdPartial<E>*>(ws);
    p.rule = pass.rule;
    p.second_pass = pass.second_pass;
    p.nl = pass.nl;
    constexpr int smem = SmemLayout<E, OPT>::fwd_bytes;
    set_smem(supcon_fwd_tile_kernel<E, OPT>, smem, "supcon_fwd");
    launch(supcon_fwd_tile_kernel<E, OPT>, kernel_name<E>(OPT ? "supcon_fwd_tile_kernel[options]" : "supcon_fwd_tile_kernel"),
           grid, dim3(E::NT), smem, E::NT, p);
  }
}

// The 'out' positive term's fp64 dots and npos from class sums, or undefined tensors where the
// kernel's own sums serve. Default sets: both, for the mma.sync kernel (it gathers no positives) and
// for the tile engines that want fp64 sums (kExactOutPositives). Options (the kernels count the kept
// positives): those engines' dots only, capped where a cap is set; 'one_positive' has no such term.
template <class C, class E>
std::tuple<at::Tensor, at::Tensor> out_class_stats(const at::Tensor& z, const DenseLabels& labels, int64_t offset,
                                                   int64_t M, bool variant_in, const ContrastOptions& opt) {
  if (variant_in || opt.denominator == kDenOnePositive) return {};
  if (opt.default_sets()) {
    if (E::kExactOutPositives || IsMmaFwd<C>::value) return class_stats(z, labels, offset, M);
    return {};
  }
  if (!E::kExactOutPositives) return {};
  if (opt.cap >= 0) return {capped_class_sum_dots(z, labels, opt.cap_rank, opt.cap, offset, M), at::Tensor()};
  return {std::get<0>(class_stats(z, labels, offset, M)), at::Tensor()};
}

// Outputs of the forward: coef is [M] for 'one_positive', else empty.
struct FwdOut {
  at::Tensor &loss, &lse, &pos, &npos, &coef;
};

template <typename scalar_t>
void launch_fwd(const at::Tensor& z, const DenseLabels& labels, int64_t offset, int64_t M, double temperature,
                bool variant_in, const ContrastOptions& opt, FwdOut& out) {
  using E = typename EngineFor<scalar_t>::type;  // the partials' layout and the finalize kernel
  using st_t = typename E::st_t;
  const int64_t N = z.size(0), D = z.size(1);
  const bool options = !opt.default_sets();
  with_fwd_config<scalar_t>(D, smem_optin(), options, [&](auto config) {
    using C = decltype(config);
    const plan::FwdPlan fp = plan::plan_fwd(M, N, C::BM, C::BN, sm_count());
    TORCH_CHECK(fp.row_blocks <= INT32_MAX, "supcon_fwd (", kBackend, "): too many anchors: ", M);
    at::Tensor ws = empty_output({fp.splits * M * static_cast<int64_t>(sizeof(FwdPartial<E>))},
                                 z.options().dtype(at::kByte));
    FwdPass<st_t> pass;
    if (options) pass.rule = set_rule(opt);
    auto run_pass = [&] {  // an mma.sync configuration knows whether it has the options
      if constexpr (IsMmaFwd<C>::value) launch_fwd_kernel<C, C::OPT>(z, labels.ids, offset, M, temperature, variant_in, fp, ws.data_ptr(), pass);
      else if (options) launch_fwd_kernel<C, true>(z, labels.ids, offset, M, temperature, variant_in, fp, ws.data_ptr(), pass);
      else launch_fwd_kernel<C, false>(z, labels.ids, offset, M, temperature, variant_in, fp, ws.data_ptr(), pass);
    };
    run_pass();
    at::Tensor pos_dot, cls_npos;
    std::tie(pos_dot, cls_npos) = out_class_stats<C, E>(z, labels, offset, M, variant_in, opt);
    const auto* partials = static_cast<const FwdPartial<E>*>(ws.data_ptr());
    const dim3 grid(static_cast<unsigned>(ceil_div(M, 256)));
    launch(supcon_fwd_finalize_kernel<E>, kernel_name<E>("supcon_fwd_finalize_kernel"), grid, dim3(256), 0, 0,
           partials, fp.splits, M, variant_in,
           pos_dot.defined() ? static_cast<const double*>(pos_dot.data_ptr<double>()) : nullptr,
           cls_npos.defined() ? static_cast<const int64_t*>(cls_npos.data_ptr<int64_t>()) : nullptr, 1.0 / temperature,
           out.loss.data_ptr<st_t>(), out.lse.data_ptr<st_t>(), out.pos.data_ptr<st_t>(), out.npos.data_ptr<int64_t>());
    if (opt.denominator != kDenOnePositive) return;
    // 'one_positive': lse is nl (the first pass's denominator held the negatives only); the second
    // pass sums the positives' terms given it.
    pass.second_pass = true;
    pass.nl = out.lse.data_ptr<st_t>();
    run_pass();
    launch(supcon_fwd_one_positive_finalize_kernel<E, FwdPartial<E>>,
           kernel_name<E>("supcon_fwd_one_positive_finalize_kernel"), grid, dim3(256), 0, 0, partials, fp.splits, M,
           variant_in, static_cast<const int64_t*>(out.npos.data_ptr<int64_t>()), out.loss.data_ptr<st_t>(),
           out.pos.data_ptr<st_t>(), out.coef.data_ptr<st_t>());
  });
}

template <class C> struct IsMmaBwd : std::false_type {};
template <typename T, int DP, bool OPT> struct IsMmaBwd<MmaBwd<T, DP, OPT>> : std::true_type {};

// Calls fn(C()) with the backward's configuration for D on a device with `optin` bytes of shared
// memory per block: for fp16 / bf16 with D <= 128 the mma.sync kernel, else the tile engine, its
// default where it fits and the compact one (a smaller D chunk) on 99 KB parts. The loss options
// take the options versions of the same kernels.
template <typename scalar_t, class Fn>
void with_bwd_config(int64_t D, int optin, bool options, Fn&& fn) {
  using E = typename EngineFor<scalar_t>::type;
  using Cmp = typename EngineFor<scalar_t>::compact;
  if constexpr (std::is_same<scalar_t, at::Half>::value || std::is_same<scalar_t, at::BFloat16>::value) {
    using T = typename E::in_t;
    if (options) {
      if (D <= 64 && MmaBwd<T, 64, true>::bytes <= optin) return fn(MmaBwd<T, 64, true>());
      if (D <= 128 && MmaBwd<T, 128, true>::bytes <= optin) return fn(MmaBwd<T, 128, true>());
    } else {
      if (D <= 64 && MmaBwd<T, 64>::bytes <= optin) return fn(MmaBwd<T, 64>());
      if (D <= 128 && MmaBwd<T, 128>::bytes <= optin) return fn(MmaBwd<T, 128>());
    }
  }
  const int bytes = options ? SmemLayout<E, true>::bwd_bytes : SmemLayout<E>::bwd_bytes;
  if (bytes <= optin) fn(E());
  else fn(Cmp());  // 99 KB parts; set_smem reports a device with even less
}

// The backward's per-anchor inputs. Default sets: g, lse, aux (pos_term for 'in', 1/npos for 'out').
// Options (supcon_options.cuh): g is gd, aux is gp, pv the positives' statistic, and rule the sets.
struct BwdInputs {
  const at::Tensor &z, &labels, &g, &lse, &aux, &gmax;
  int64_t offset, M;
  double inv_t;
  bool variant_in;
  const at::Tensor* pv = nullptr;  // options only
  SetRule rule;
};

// Launches the backward kernel of configuration C over the plan's blocks, writing grad rows or partials.
template <class C, bool OPT>
void launch_bwd_kernel(const BwdInputs& in, const plan::BwdPlan& bp, at::Tensor& heavy, at::Tensor& light,
                       at::Tensor& grad) {
  using st_t = typename C::st_t;
  const dim3 grid(static_cast<unsigned>(bp.blocks));
  if constexpr (IsMmaBwd<C>::value) {
    MmaBwdParams<C> p{reinterpret_cast<const uint16_t*>(in.z.data_ptr()), in.labels.data_ptr<label_t>(),
                      in.z.size(0), in.z.size(1), in.offset, in.M, bp, static_cast<float>(in.inv_t), in.variant_in,
                      vec_ok(in.z), in.g.data_ptr<float>(), in.lse.data_ptr<float>(), in.aux.data_ptr<float>(),
                      in.gmax.data_ptr<float>(), heavy.defined() ? heavy.data_ptr<float>() : nullptr,
                      light.defined() ? light.data_ptr<float>() : nullptr,
                      reinterpret_cast<typename C::in_t*>(grad.data_ptr()), in.rule, nullptr};
    if constexpr (C::OPT) p.pv = in.pv->data_ptr<float>();  // the configuration, not OPT, says (with_bwd_config)
    set_smem(supcon_bwd_mma_kernel<C>, C::bytes, "supcon_bwd");
    launch(supcon_bwd_mma_kernel<C>, std::string(C::OPT ? "supcon_bwd_mma_kernel[options]<" : "supcon_bwd_mma_kernel<") +
                                         C::kName + ", DP=" + std::to_string(C::DP) + ">",
           grid, dim3(C::NT), C::bytes, C::NT, p);
  } else {
    using E = C;
    BwdParams<E> p;
    p.z = reinterpret_cast<const typename E::raw_t*>(in.z.data_ptr());
    p.labels = in.labels.data_ptr<label_t>();
    p.N = in.z.size(0);
    p.D = in.z.size(1);
    p.offset = in.offset;
    p.M = in.M;
    p.plan = bp;
    p.inv_t = static_cast<st_t>(in.inv_t);
    p.variant_in = in.variant_in;
    p.vec = vec_ok(in.z);
    p.g = in.g.data_ptr<st_t>();
    p.lse = in.lse.data_ptr<st_t>();
    p.aux = in.aux.data_ptr<st_t>();
    p.gmax = in.gmax.data_ptr<float>();
    p.partial_heavy = heavy.defined() ? heavy.data_ptr<st_t>() : nullptr;
    p.partial_light = light.defined() ? light.data_ptr<st_t>() : nullptr;
    p.grad_out = reinterpret_cast<typename E::in_t*>(grad.data_ptr());
    p.rule = in.rule;
    p.pv = OPT ? in.pv->data_ptr<st_t>() : nullptr;
    constexpr int smem = SmemLayout<E, OPT>::bwd_bytes;
    set_smem(supcon_bwd_tile_kernel<E, OPT>, smem, "supcon_bwd");
    launch(supcon_bwd_tile_kernel<E, OPT>, kernel_name<E>(OPT ? "supcon_bwd_tile_kernel[options]" : "supcon_bwd_tile_kernel"),
           grid, dim3(E::NT), smem, E::NT, p);
  }
}

// grad: [G, D], the gradient of z's first G rows (the rest of the contrast set is a queue's).
template <class C, bool OPT>
void launch_bwd(const BwdInputs& in, at::Tensor& grad) {
  using st_t = typename C::st_t;
  const int64_t N = grad.size(0), D = in.z.size(1);  // from here on, N: the rows that get a gradient
  const plan::BwdPlan bp = plan::plan_bwd(in.z.size(0), in.M, in.offset, D, C::BM, C::BN, sm_count(), sizeof(st_t), N);
  TORCH_CHECK(bp.blocks <= INT32_MAX, "supcon_bwd (", kBackend, "): too many rows: ", N);
  const auto st_opts = in.z.options().dtype(in.g.scalar_type());
  at::Tensor heavy, light;
  if (bp.heavy_parts > 1) heavy = empty_output({bp.heavy_parts * bp.heavy_count * C::BM, D}, st_opts);
  if (bp.light_parts > 1) light = empty_output({bp.light_parts * bp.light_count * C::BM, D}, st_opts);
  launch_bwd_kernel<C, OPT>(in, bp, heavy, light, grad);
  // Rows of cut blocks get the fixed-order sum of their parts: heavy rows are one range [h0, h1),
  // light rows lie before and after it.
  const int64_t h0 = bp.heavy_first * C::BM, h1 = std::min(N, (bp.heavy_first + bp.heavy_count) * C::BM);
  if (heavy.defined()) grad.narrow(0, h0, h1 - h0).copy_(heavy.view({bp.heavy_parts, -1, D}).sum(0).narrow(0, 0, h1 - h0));
  if (light.defined()) {
    const at::Tensor sum = light.view({bp.light_parts, -1, D}).sum(0);
    if (h0 > 0) grad.narrow(0, 0, h0).copy_(sum.narrow(0, 0, h0));
    if (h1 < N) grad.narrow(0, h1, N - h1).copy_(sum.narrow(0, h0, N - h1));
  }
}

// The kernels take one contrast set: z then the queue's rows, contiguous (the queue costs a copy);
// the backward plans its rows over z's alone (supcon_plan.cuh): no gradient work on the queue.
at::Tensor contrast_set(const at::Tensor& z, const ContrastOptions& opt) {
  return opt.queue.defined() ? at::cat({z, opt.queue}).contiguous() : z.contiguous();
}

}  // namespace

FwdOutputs supcon_fwd_cuda(const at::Tensor& z_in, const at::Tensor& labels_in, int64_t offset, int64_t num_anchors,
                           double temperature, bool variant_in, const ContrastOptions& opt_in) {
  check_fwd_args(z_in, labels_in, offset, num_anchors, temperature, opt_in.queue_rows());
  TORCH_CHECK(on_device(z_in), "supcon_fwd (", kBackend, "): z is on ", z_in.device());
  const DeviceGuard guard(z_in.device());
  const int64_t M = num_anchors;
  const auto fopts = z_in.options().dtype(stat_dtype(z_in));
  at::Tensor loss = empty_output({M}, fopts);
  at::Tensor lse = empty_output({M}, fopts);
  at::Tensor pos = empty_output({M}, fopts);
  const ContrastOptions opt = kernel_options(opt_in);
  at::Tensor coef = empty_output({opt.denominator == kDenOnePositive ? M : 0}, fopts);  // 'one_positive' only
  const at::Tensor z = contrast_set(z_in, opt);
  if (M == 0) return {loss, lse, pos, at::zeros({0}, z_in.options().dtype(at::kLong)), coef};

  const DenseLabels labels = dense_labels(labels_in);
  // npos comes out of the kernels (they compare the label pairs) or from the class sizes (the default
  // sets' 'out', class_stats): no host synchronization either way.
  at::Tensor npos = empty_output({M}, z_in.options().dtype(at::kLong));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "supcon_fwd_cuda", [&] {
    FwdOut out{loss, lse, pos, npos, coef};
    launch_fwd<scalar_t>(z, labels, offset, M, temperature, variant_in, opt, out);
  });
  return {loss, lse, pos, npos, coef};
}

at::Tensor supcon_bwd_cuda(const at::Tensor& grad_loss, const at::Tensor& z_in, const at::Tensor& labels_in,
                           const at::Tensor& lse_in, const at::Tensor& pos_in, const at::Tensor& npos_in,
                           int64_t offset, int64_t num_anchors, double temperature, bool variant_in,
                           const ContrastOptions& opt_in, const at::Tensor& coef) {
  check_bwd_args(grad_loss, z_in, labels_in, lse_in, pos_in, npos_in, offset, num_anchors, temperature,
                 opt_in.queue_rows());
  TORCH_CHECK(on_device(z_in), "supcon_bwd (", kBackend, "): z is on ", z_in.device());
  const DeviceGuard guard(z_in.device());
  const ContrastOptions opt = kernel_options(opt_in);
  const at::Tensor z = contrast_set(z_in, opt);
  const int64_t N = z.size(0), D = z.size(1), M = num_anchors;
  if (M == 0 || N == 0 || D == 0) return at::zeros({z_in.size(0), D}, z_in.options());

  const at::Tensor labels = dense_labels(labels_in).ids;
  const auto st = stat_dtype(z);
  const at::Tensor npos = npos_in.contiguous();
  const at::Tensor has_pos = npos > 0;
  // g_i = grad_loss_i where anchor i has a positive, else 0 (its loss is the constant 0).
  const at::Tensor g = at::where(has_pos, grad_loss.to(st), at::zeros({}, z.options().dtype(st))).contiguous();
  at::Tensor grad = empty_output({z_in.size(0), D}, z.options());
  // One launch over all N rows; the cut into blocks: supcon_plan.cuh.
  if (!opt.default_sets()) {
    const OptionStats o = option_stats(g, has_pos, npos, lse_in, pos_in, coef, variant_in, opt);
    // |H| <= |gd| + |gp| per anchor term (each weight is at most 1): the TC kernels' H scale from it
    const at::Tensor gmax = at::amax(o.gd.abs() + o.gp.abs()).to(at::kFloat);
    BwdInputs in{z, labels, o.gd, o.lse, o.gp, gmax, offset, M, 1.0 / temperature, variant_in, &o.pv, set_rule(opt)};
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "supcon_bwd_cuda", [&] {
      with_bwd_config<scalar_t>(D, smem_optin(), true, [&](auto config) { launch_bwd<decltype(config), true>(in, grad); });
    });
    return grad;
  }
  const at::Tensor lse = lse_in.to(st).contiguous();
  // aux: pos_term ('in') or 1/npos ('out'; the positive part of G is -g/npos on every positive).
  const at::Tensor aux =
      variant_in ? pos_in.to(st).contiguous()
                 : at::where(has_pos, npos.clamp_min(1).to(st).reciprocal(), at::zeros({}, z.options().dtype(st))).contiguous();
  const at::Tensor gmax = at::amax(g.abs()).to(at::kFloat);  // 0-dim, device; read by the TC kernels
  const BwdInputs in{z, labels, g, lse, aux, gmax, offset, M, 1.0 / temperature, variant_in};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "supcon_bwd_cuda", [&] {
    with_bwd_config<scalar_t>(D, smem_optin(), false, [&](auto config) { launch_bwd<decltype(config), false>(in, grad); });
  });
  return grad;
}

#ifdef SUPCON_EMULATION
// The blocks of a launch as the host plans them for `arch`, in launch order, for the schedule model
// (supcon_fast/schedule_model.py): [blocks, 3] int64 (row block, column tiles, 1 if the row block
// holds an anchor). kernel: "fwd" or "bwd"; grad_rows: the backward's rows with a gradient (-1: N).
at::Tensor plan_blocks(const std::string& kernel, int64_t N, int64_t M, int64_t offset, int64_t D,
                       at::ScalarType dtype, const std::string& arch, int64_t grad_rows) {
  TORCH_CHECK_VALUE(kernel == "fwd" || kernel == "bwd", "kernel must be 'fwd' or 'bwd', got '", kernel, "'");
  TORCH_CHECK_VALUE(N > 0 && M > 0 && offset >= 0 && offset + M <= N && D > 0,
                    "need 0 < M, 0 <= offset, offset + M <= N and D > 0");
  TORCH_CHECK_VALUE(grad_rows == -1 || (grad_rows >= offset + M && grad_rows <= N),
                    "grad_rows must be -1 or cover the anchors and lie within N");
  supcon_emu::Arch a{};
  try {
    a = supcon_emu::find_arch(arch);
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, e.what());
  }
  std::vector<int64_t> rows;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "plan_blocks", [&] {
    if (kernel == "fwd") {
      with_fwd_config<scalar_t>(D, a.smem_optin, /*options=*/false, [&](auto config) {
        using C = decltype(config);
        const plan::FwdPlan fp = plan::plan_fwd(M, N, C::BM, C::BN, a.sms);
        const int64_t tiles = ceil_div(N, C::BN);
        for (int64_t s = 0; s < fp.splits; ++s)
          for (int64_t rb = 0; rb < fp.row_blocks; ++rb)  // x (row blocks) varies fastest in launch order
            rows.insert(rows.end(), {rb, std::min(tiles, (s + 1) * fp.tiles_per_split) - s * fp.tiles_per_split, 1});
      });
      return;
    }
    with_bwd_config<scalar_t>(D, a.smem_optin, /*options=*/false, [&](auto config) {
      using C = decltype(config);
      const plan::BwdPlan bp = plan::plan_bwd(N, M, offset, D, C::BM, C::BN, a.sms, sizeof(typename C::st_t), grad_rows);
      for (int64_t b = 0; b < bp.blocks; ++b) {
        const plan::BwdItem it = plan::bwd_item(bp, b);
        rows.insert(rows.end(), {it.row_block, it.tile_end - it.tile_begin, it.heavy ? 1 : 0});
      }
    });
  });
  return at::tensor(rows, at::kLong).view({-1, 3});
}
#endif

}  // namespace SUPCON_CUDA_NS
}  // namespace supcon_fast

#ifndef SUPCON_EMULATION
namespace supcon_fast::cuda {
namespace {
// The op schemas' signatures (csrc/ops.cpp) around the functions above.
FwdOutputs fwd_op(const at::Tensor& z, const at::Tensor& labels, int64_t offset, int64_t num_anchors,
                  double temperature, bool variant_in, const c10::optional<at::Tensor>& queue,
                  c10::string_view denominator, const c10::optional<at::Tensor>& cap_rank, int64_t cap) {
  return supcon_fwd_cuda(z, labels, offset, num_anchors, temperature, variant_in,
                         contrast_options(z, queue, denominator, cap_rank, cap));
}

at::Tensor bwd_op(const at::Tensor& grad_loss, const at::Tensor& z, const at::Tensor& labels, const at::Tensor& lse,
                  const at::Tensor& pos_term, const at::Tensor& npos, int64_t offset, int64_t num_anchors,
                  double temperature, bool variant_in, const c10::optional<at::Tensor>& queue,
                  c10::string_view denominator, const c10::optional<at::Tensor>& cap_rank, int64_t cap,
                  const c10::optional<at::Tensor>& coef) {
  return supcon_bwd_cuda(grad_loss, z, labels, lse, pos_term, npos, offset, num_anchors, temperature, variant_in,
                         contrast_options(z, queue, denominator, cap_rank, cap), coef.has_value() ? *coef : at::Tensor());
}
}  // namespace
}  // namespace supcon_fast::cuda

TORCH_LIBRARY_IMPL(supcon_fast, CUDA, m) {
  m.impl("supcon_fwd", &supcon_fast::cuda::fwd_op);
  m.impl("supcon_bwd", &supcon_fast::cuda::bwd_op);
}
#endif
