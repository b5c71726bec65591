// The CUDA host code and kernels of csrc/cuda/, compiled as plain C++ against the emulation
// (csrc/emu/emu_cuda.h): supcon_fast::cuda_emu::supcon_fwd_cuda / supcon_bwd_cuda run the very
// same planning, launches and kernel source on CPU tensors.
#define SUPCON_EMULATION 1
// The kernels' fma() is a libm call without the FMA instruction set (an order of magnitude slower
// in the FFMA engine's inner loop); setup.py defines SUPCON_EMU_FMA where the build machine has it.
// nvcc contracts a * b + c into FMAs by default, so contraction here also stays closer to the device.
#if defined(SUPCON_EMU_FMA) && defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("fma")
#endif
#include "../cuda/supcon_cuda.cu"
