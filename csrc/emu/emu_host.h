// Host side of the CUDA emulation: what csrc/cuda/device_api.cuh needs to run the CUDA host code
// on CPU tensors (device queries answer for the emulated arch; launches run emu_runtime.h's grid).
#pragma once

#include <cstdint>
#include <string>
#include <tuple>
#include <utility>

#include "emu_runtime.h"

namespace supcon_emu {

// Launches `kernel(args...)` over the grid. The arguments are copied, as a kernel launch copies
// its parameters; every emulated thread calls the kernel with the same copies.
template <typename... P, typename... A>
void launch_kernel(void (*kernel)(P...), std::string name, dim3 grid, dim3 block, int64_t dynamic_smem,
                   int max_threads, A&&... args) {
  struct Call {
    void (*kernel)(P...);
    std::tuple<std::decay_t<P>...> params;
  } call{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
  const LaunchSpec spec{std::move(name), reinterpret_cast<const void*>(kernel), grid, block, dynamic_smem, max_threads};
  launch(spec, [](void* p) {
    auto* c = static_cast<Call*>(p);
    std::apply(c->kernel, c->params);
  }, &call);
}

}  // namespace supcon_emu
