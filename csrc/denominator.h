// Which columns enter an anchor's denominator (reference.DENOMINATORS, same order): shared by the op's
// declarations (supcon.h) and the CUDA kernels (cuda/supcon_options.cuh), which include no torch header.
#pragma once

#include <cstdint>

namespace supcon_fast {

enum Denominator : int64_t { kDenAll = 0, kDenOnePositive = 1, kDenOnlyNegatives = 2 };

}  // namespace supcon_fast
