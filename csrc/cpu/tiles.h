// Tiling shared by the CPU op's two implementations (supcon_cpu.cpp: the default sets, with the
// class-sum shortcut for 'out'; supcon_cpu_options.cpp: the denominator modes and the cap): tile
// sizes, dense class ids, one BLAS call per logits tile, and the online log-sum-exp.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <unordered_map>
#include <vector>

#include "rows.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// One copy of each hot function per instruction set; the loader picks the best the CPU runs.
#define SUPCON_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SUPCON_MULTIVERSION
#endif

namespace supcon_fast::cpu {

constexpr int64_t kRowTile = 512;   // tile: 512 x 2048 fp32 = 4 MiB of workspace (x2 in backward)
constexpr int64_t kColTile = 2048;
constexpr int64_t kRowGrain = 16;   // rows per parallel task in the elementwise passes

// Labels are arbitrary int64; the kernels need dense class ids 0..C-1 and class sizes.
struct DenseClasses {
  std::vector<int64_t> id;     // [N]
  std::vector<int64_t> count;  // [C]
};

inline DenseClasses dense_classes(const at::Tensor& labels) {
  const int64_t n = labels.size(0);
  const int64_t* y = labels.data_ptr<int64_t>();
  DenseClasses out;
  out.id.resize(n);
  std::unordered_map<int64_t, int64_t> index;
  index.reserve(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) {
    auto it = index.emplace(y[j], static_cast<int64_t>(index.size())).first;
    out.id[j] = it->second;
  }
  out.count.assign(index.size(), 0);
  for (int64_t j = 0; j < n; ++j) out.count[out.id[j]] += 1;
  return out;
}

// logits tile [rows, cols] = (x[rows] . y[cols]) / T into a contiguous buffer, by one BLAS call.
template <typename scalar_t>
inline void tile_logits(const at::Tensor& x_rows, const at::Tensor& y_cols, double inv_t, scalar_t* buf) {
  auto out = at::from_blob(buf, {x_rows.size(0), y_cols.size(0)}, x_rows.options());
  at::addmm_out(out, out, x_rows, y_cols.t(), /*beta=*/0, /*alpha=*/inv_t);  // beta 0 ignores out's contents
}

// Online log-sum-exp state of one row: running max m and sum l of exp(x - m), in fp64.
struct RunningLSE {
  double m = -std::numeric_limits<double>::infinity();
  double l = 0.0;
  template <typename scalar_t>
  SUPCON_INLINE void add(const scalar_t* v, int64_t n) {  // v: -inf where excluded
    const scalar_t mx = row_max(v, n);
    if (mx == -std::numeric_limits<scalar_t>::infinity()) return;
    const double new_m = std::max(m, static_cast<double>(mx));
    const double s = row_sum_exp(v, n, static_cast<scalar_t>(new_m));
    l = l * std::exp(m - new_m) + s;
    m = new_m;
  }
  double value() const { return l > 0 ? m + std::log(l) : -std::numeric_limits<double>::infinity(); }
};

}  // namespace supcon_fast::cpu
