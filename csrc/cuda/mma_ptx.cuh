// Warp-level matrix instructions for the tensor-core kernels, one small set of wrappers: inline PTX
// on the device, csrc/emu/emu_mma.h under the emulation (which moves data between lanes by the PTX
// ISA's documented fragment layouts, so emulated kernels move data as the hardware does).
//   mma_16816<T>(d, a, b, c)   mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}: d = a . b + c
//   ldmatrix_x4(r, row)        ldmatrix.sync.aligned.m8n8.x4.shared.b16 (row: this lane's row address)
//   ldmatrix_x4_trans(r, row)  the same, transposed
//   cp_async_16(dst, src, pred) cp.async.cg.shared.global, 16 bytes (zeros when !pred)
//   cp_async_commit(), cp_async_wait<N>()  commit_group / wait_group N
//   ex2(x)                     ex2.approx.ftz.f32: 2^x on the MUFU unit (2 ulp; the emulation: exp2f)
//   keep(v)                    v, opaque to the optimizer (no recomputation of a loop bound)
//   mul_rn(a, b)               a b rounded on its own (__fmul_rn: not fused into an FMA)
//   pack2<T>(lo, hi)           two floats rounded to T (fp16 / bf16, round to nearest even) in one
//                              32-bit register, lo in the low half: an A / B fragment register
// sm_80 and newer. The layouts are spelled out in emu_mma.h.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cuda_compat.cuh"

#ifdef SUPCON_EMULATION
#include "../emu/emu_mma.h"
#endif

namespace supcon_fast {
namespace SUPCON_CUDA_NS {
namespace ptx {

#ifdef SUPCON_EMULATION

template <typename T>
inline void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4],
                      const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  supcon_emu::mma::mma_16816<T>(d, a, b, c, file, line);
}
inline void ldmatrix_x4(uint32_t (&r)[4], const void* row, const char* file = __builtin_FILE(),
                        int line = __builtin_LINE()) {
  supcon_emu::mma::ldmatrix_x4<false>(r, row, file, line);
}
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
  supcon_emu::mma::ldmatrix_x4<true>(r, row, file, line);
}
inline void cp_async_16(void* dst, const void* src, bool pred, const char* file = __builtin_FILE(),
                        int line = __builtin_LINE()) {
  supcon_emu::async_copy(dst, src, 16, pred ? 16 : 0, file, line);
}
inline void cp_async_commit() { supcon_emu::async_commit(); }
template <int N>
inline void cp_async_wait() {
  supcon_emu::async_wait(N);
}
inline float ex2(float x) { return std::exp2(x); }
inline int64_t keep(int64_t v) { return v; }
inline float mul_rn(float a, float b) {
  volatile float r = a * b;  // rounded here: the compiler may not fuse it into a following add (FMA)
  return r;
}
template <typename T>
inline uint32_t pack2(float lo, float hi) {
  const T a(lo), b(hi);
  uint16_t la, lb;
  std::memcpy(&la, &a, 2);
  std::memcpy(&lb, &b, 2);
  return static_cast<uint32_t>(la) | (static_cast<uint32_t>(lb) << 16);
}

#else


template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                          const float (&c)[4]) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
  } else {
    static_assert(std::is_same<T, __half>::value, "mma_16816: bf16 or fp16");
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
  }
}

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(row)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(row)));
}
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool pred) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(dst)), "l"(src),
               "r"(pred ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x = lo: the low half
    return *reinterpret_cast<const uint32_t*>(&v);
  } else {
    const __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  }
}
__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
// v, opaque to the optimizer: a loop bound kept in a register, where the compiler would otherwise
// recompute it from the kernel parameters (some 20 uniform-datapath instructions) at every use.
// a b rounded to fp32 on its own: never contracted with a following add into an FFMA.
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ int64_t keep(int64_t v) {
  asm volatile("" : "+l"(v));
  return v;
}

#endif

}  // namespace ptx
}  // namespace SUPCON_CUDA_NS
}  // namespace supcon_fast
