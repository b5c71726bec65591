// The device-side CUDA API the kernels use, as plain C++ for the emulation (csrc/emu/emu_runtime.h).
// Included instead of <cuda.h>, <cuda_runtime.h>, <cuda_fp16.h>, <cuda_bf16.h> and <mma.h> when
// SUPCON_EMULATION is defined (see csrc/cuda/cuda_compat.cuh).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "emu_half.h"
#include "emu_runtime.h"

// Qualifiers: host functions here; launch bounds are checked by the launcher (LaunchSpec).
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

using supcon_emu::dim3;
using supcon_emu::uint3;

#define threadIdx (::supcon_emu::thread_idx())
#define blockIdx (::supcon_emu::block_idx())
#define blockDim (::supcon_emu::block_dim())
#define gridDim (::supcon_emu::grid_dim())
constexpr int warpSize = 32;

inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  supcon_emu::sync_threads(file, line);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  supcon_emu::sync_warp(mask, file, line);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32, const char* file = __builtin_FILE(),
                         int line = __builtin_LINE()) {
  static_assert(sizeof(T) <= 8, "__shfl_xor_sync: 32- or 64-bit values");
  uint64_t bits = 0;
  std::memcpy(&bits, &var, sizeof(T));
  bits = supcon_emu::shfl_xor_bits(mask, bits, lane_mask, width, file, line);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

// Blocks run one at a time and fibers switch only at barriers: a read-modify-write is atomic.
template <typename T>
inline T atomicAdd(T* address, T val) {
  const T old = *address;
  *address = old + val;
  return old;
}

struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }

inline float __int_as_float(int i) { return supcon_emu::bit_cast<float>(i); }
inline float __uint_as_float(unsigned u) { return supcon_emu::bit_cast<float>(u); }
inline int __float_as_int(float f) { return supcon_emu::bit_cast<int>(f); }
inline double __longlong_as_double(long long i) { return supcon_emu::bit_cast<double>(i); }

// CUDA's integer and floating min / max overloads (the host libm covers expf, logf, fmaxf, ...).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
using std::isfinite;

// Shared memory: one allocation per declaration and block (see emu_runtime.h).
#define SUPCON_EMU_SHARED(type, name, count)                                                      \
  type* const name = static_cast<type*>(::supcon_emu::static_shared(sizeof(type) * (count),      \
                                                                     alignof(type), #name))
#define SUPCON_EMU_DYNAMIC_SHARED(type, name) type* const name = static_cast<type*>(::supcon_emu::dynamic_shared())

#include "emu_wmma.h"
