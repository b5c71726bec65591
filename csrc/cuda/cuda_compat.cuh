// What the kernel headers include instead of the CUDA headers: the real ones under nvcc, the CPU
// emulation (csrc/emu/) when SUPCON_EMULATION is defined, so that the very same kernel source runs
// in every CI. The two builds live in different namespaces (supcon_fast::cuda and
// supcon_fast::cuda_emu), so one library can hold both.
//   SUPCON_SHARED(type, name, count): a static __shared__ array;
//   SUPCON_DYNAMIC_SHARED(type, name): the block's dynamic shared memory (128-byte aligned).
#pragma once

#ifdef SUPCON_EMULATION
#include "../emu/emu_cuda.h"
#define SUPCON_CUDA_NS cuda_emu
#define SUPCON_SHARED(type, name, count) SUPCON_EMU_SHARED(type, name, count)
#define SUPCON_DYNAMIC_SHARED(type, name) SUPCON_EMU_DYNAMIC_SHARED(type, name)
#else
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>
#define SUPCON_CUDA_NS cuda
#define SUPCON_SHARED(type, name, count) __shared__ type name[count]
#define SUPCON_DYNAMIC_SHARED(type, name) extern __shared__ __align__(128) type name[]
#endif
