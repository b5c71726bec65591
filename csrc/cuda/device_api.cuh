// The host-side CUDA calls of supcon_cuda.cu, in one place, for the device or for the CPU
// emulation (SUPCON_EMULATION): device queries, the shared-memory opt-in, kernel launches,
// the device guard and output allocation. Everything else in the host code is shared.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>

#include "cuda_compat.cuh"

#ifdef SUPCON_EMULATION
#include "../emu/emu_host.h"
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace supcon_fast {
namespace SUPCON_CUDA_NS {

#ifdef SUPCON_EMULATION
constexpr const char* kBackend = "CUDA emulation";
inline bool on_device(const at::Tensor& t) { return t.is_cpu(); }
struct DeviceGuard {
  explicit DeviceGuard(const at::Device&) {}
};
inline int sm_count() { return supcon_emu::current_arch().sms; }
inline int smem_optin() { return supcon_emu::current_arch().smem_optin; }
template <typename K>
int64_t static_smem(K kernel) {
  return supcon_emu::static_smem_of(reinterpret_cast<const void*>(kernel));
}
template <typename K>
void allow_dynamic_smem(K kernel, int bytes) {
  supcon_emu::set_max_dynamic_smem(reinterpret_cast<const void*>(kernel), bytes);
}
template <typename... P, typename... A>
void launch(void (*kernel)(P...), const std::string& name, dim3 grid, dim3 block, int smem, int max_threads,
            A&&... args) {
  supcon_emu::launch_kernel(kernel, name, grid, block, smem, max_threads, std::forward<A>(args)...);
}
// Kernel outputs start as NaN (or -1 for integers) under emulation: an element a kernel forgets
// to write shows up in the results.
inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  at::Tensor t = at::empty(sizes, opts);
  if (at::isFloatingType(t.scalar_type())) t.fill_(std::numeric_limits<double>::quiet_NaN());
  else t.fill_(-1);
  return t;
}
#else
constexpr const char* kBackend = "CUDA";
inline bool on_device(const at::Tensor& t) { return t.is_cuda(); }
using DeviceGuard = c10::cuda::CUDAGuard;
inline int sm_count() {
  // (c10 only: ATen/cuda/CUDAContext.h would need the cuSPARSE/cuBLAS headers at build time)
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, c10::cuda::current_device()));
  return sms;
}
inline int smem_optin() {
  int optin = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, c10::cuda::current_device()));
  return optin;
}
template <typename K>
int64_t static_smem(K kernel) {
  cudaFuncAttributes attr{};
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
  return static_cast<int64_t>(attr.sharedSizeBytes);
}
template <typename K>
void allow_dynamic_smem(K kernel, int bytes) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}
template <typename... P, typename... A>
void launch(void (*kernel)(P...), const std::string& /*name*/, dim3 grid, dim3 block, int smem, int /*max_threads*/,
            A&&... args) {
  kernel<<<grid, block, smem, c10::cuda::getCurrentCUDAStream()>>>(std::forward<A>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& opts) { return at::empty(sizes, opts); }
#endif

// Opts the kernel in to `bytes` of dynamic shared memory (> 48 KB needs it), after checking that the
// device allows that much per block together with the kernel's static shared memory.
template <typename K>
void set_smem(K kernel, int bytes, const char* what) {
  const int optin = smem_optin();
  const int64_t total = static_smem(kernel) + bytes;
  TORCH_CHECK(total <= optin, what, " (", kBackend, "): the kernel needs ", total,
              " bytes of shared memory per block, this device allows ", optin,
              " (sm_80 / sm_90 class GPUs have enough)");
  allow_dynamic_smem(kernel, bytes);
}

}  // namespace SUPCON_CUDA_NS
}  // namespace supcon_fast
