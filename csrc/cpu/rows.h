// Row kernels of the CPU op: the elementwise work on one row of a logits tile.
//
// These loops hold the O(N^2) transcendental work, so they must vectorize: a branch-free exp for
// float (Cephes-style, about 1 ulp; exact 0 below the underflow point, so -inf gives 0), selects
// instead of branches, and `omp simd` reductions. The callers compile them once per instruction set
// (target_clones: AVX-512, AVX2, baseline) and the loader picks the best the CPU has.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace supcon_fast::cpu {

#define SUPCON_INLINE inline __attribute__((always_inline))

SUPCON_INLINE float fast_exp(float x) {
  // exp(x) = 2^n * exp(r), n = round(x / ln 2), |r| <= ln2 / 2; Cephes expf polynomial.
  const float kHi = 88.3762626647949f, kLo = -87.3365478515625f;
  const bool under = x < kLo;
  x = x > kHi ? kHi : (under ? kLo : x);
  const float n = std::nearbyint(x * 1.44269504088896341f);
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return under ? 0.0f : p * scale;
}
SUPCON_INLINE double fast_exp(double x) { return std::exp(x); }  // fp64 is the accuracy path

template <typename T>
SUPCON_INLINE T row_max(const T* v, int64_t n) {
  T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t c = 0; c < n; ++c) m = v[c] > m ? v[c] : m;
  return m;
}

// sum_c exp(v[c] - shift)
template <typename T>
SUPCON_INLINE T row_sum_exp(const T* v, int64_t n, T shift) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t c = 0; c < n; ++c) s += fast_exp(v[c] - shift);
  return s;
}

// out[c] = v[c] where cls[c] == y, else -inf
template <typename T>
SUPCON_INLINE void row_select_class(const T* v, const int64_t* cls, int64_t y, int64_t n, T* out) {
  const T ninf = -std::numeric_limits<T>::infinity();
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) out[c] = cls[c] == y ? v[c] : ninf;
}

// Gradient of the loss w.r.t. one row of logits v[0..n) (v = s, already scaled by 1/T):
//   h[c] = g_r (exp(v - l_r) - [in, same class] exp(v - p_r))                 (row is an anchor)
//        + g_c[c] (exp(v - l_c[c]) - [in, same class] exp(v - p_c[c]))        (columns are anchors)
// g_r = 0 skips the row term; g_c == nullptr skips the column term. cls: the columns' classes.
template <typename T>
SUPCON_INLINE void row_grad(const T* v, int64_t n, T g_r, T l_r, T p_r, const T* g_c, const T* l_c,
                            const T* p_c, bool variant_in, const int64_t* cls, int64_t y, T* h) {
  if (g_r != 0) {
#pragma omp simd
    for (int64_t c = 0; c < n; ++c) h[c] = g_r * fast_exp(v[c] - l_r);
    if (variant_in) {
#pragma omp simd
      for (int64_t c = 0; c < n; ++c) h[c] -= cls[c] == y ? g_r * fast_exp(v[c] - p_r) : T(0);
    }
  } else {
    for (int64_t c = 0; c < n; ++c) h[c] = 0;
  }
  if (g_c != nullptr) {
#pragma omp simd
    for (int64_t c = 0; c < n; ++c) h[c] += g_c[c] * fast_exp(v[c] - l_c[c]);
    if (variant_in) {
#pragma omp simd
      for (int64_t c = 0; c < n; ++c) h[c] -= cls[c] == y ? g_c[c] * fast_exp(v[c] - p_c[c]) : T(0);
    }
  }
}

}  // namespace supcon_fast::cpu
