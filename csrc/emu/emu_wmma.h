// nvcuda::wmma for the emulation: every lane holds the whole 16 x 16 tile (the hardware spreads
// it over the warp in an unspecified layout, which the kernels never rely on: they touch
// fragments only through this API and element-wise through x[]). Products are exact (a 16-bit
// times 16-bit product fits in fp32) and accumulate in fp32. load / store / mma are
// warp-collective: pointers must be 256-bit aligned and ldm a multiple of 16 bytes, as on the
// device; a store writes only this lane's share of the tile, so a lane that skips it leaves
// poison behind; mma checks that every lane holds the same inputs.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "emu_half.h"
#include "emu_runtime.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

namespace detail {
template <class Use, int M, int N, int K> struct Shape;
template <int M, int N, int K> struct Shape<matrix_a, M, N, K> { static constexpr int rows = M, cols = K; };
template <int M, int N, int K> struct Shape<matrix_b, M, N, K> { static constexpr int rows = K, cols = N; };
template <int M, int N, int K> struct Shape<accumulator, M, N, K> { static constexpr int rows = M, cols = N; };

inline float to_float(float v) { return v; }
inline float to_float(__half v) { return static_cast<float>(v); }
inline float to_float(__nv_bfloat16 v) { return static_cast<float>(v); }

template <typename T>
inline void check_ptr_ldm(const void* p, unsigned ldm, const char* op, const char* file, int line) {
  if (reinterpret_cast<std::uintptr_t>(p) % 32 != 0)
    supcon_emu::fail(std::string(op) + ": pointer not 256-bit (32-byte) aligned", file, line);
  if ((ldm * sizeof(T)) % 16 != 0)
    supcon_emu::fail(std::string(op) + ": ldm = " + std::to_string(ldm) + " is not a multiple of 16 bytes (" +
                         std::to_string(16 / sizeof(T)) + " elements)",
                     file, line);
}
}  // namespace detail

// Elements stored row-major by logical (row, col) of the tile.
template <class Use, int M, int N, int K, typename T, class Layout = void>
struct fragment {
  using S = detail::Shape<Use, M, N, K>;
  static constexpr int rows = S::rows, cols = S::cols;
  static constexpr int num_elements = rows * cols;
  T x[num_elements];
};

template <class Use, int M, int N, int K, typename T, class L>
inline void fill_fragment(fragment<Use, M, N, K, T, L>& f, T v) {
  for (int i = 0; i < f.num_elements; ++i) f.x[i] = v;
}

// matrix_a / matrix_b: the layout is the fragment's.
template <class Use, int M, int N, int K, typename T, class L>
inline void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const T* p, unsigned ldm,
                             const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  static_assert(!std::is_same<Use, accumulator>::value, "accumulator loads take a layout_t");
  detail::check_ptr_ldm<T>(p, ldm, "wmma::load_matrix_sync", file, line);
  supcon_emu::count_warp_op();
  constexpr bool row = std::is_same<L, row_major>::value;
  for (int r = 0; r < f.rows; ++r)
    for (int c = 0; c < f.cols; ++c) f.x[r * f.cols + c] = row ? p[r * ldm + c] : p[c * ldm + r];
}

template <int M, int N, int K>
inline void load_matrix_sync(fragment<accumulator, M, N, K, float, void>& f, const float* p, unsigned ldm,
                             layout_t layout, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  detail::check_ptr_ldm<float>(p, ldm, "wmma::load_matrix_sync", file, line);
  supcon_emu::count_warp_op();
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) f.x[r * N + c] = layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
}

// Each lane writes only its share of the tile, the warp together the whole of it. The share is
// the accumulator layout of the tensor cores' mma (16 x 8 halves: lane l holds rows l/4 and l/4 + 8,
// columns 2 (l % 4) and the next), not a pattern that kernels are likely to read back with: a
// lane reading elements another lane stored, without a __syncwarp, sees poison or stale data.
template <int M, int N, int K>
inline void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float, void>& f, unsigned ldm,
                              layout_t layout, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  static_assert(M % 16 == 0 && N % 8 == 0, "accumulator tiles of 16 x 8 blocks");
  detail::check_ptr_ldm<float>(p, ldm, "wmma::store_matrix_sync", file, line);
  supcon_emu::count_warp_op();
  const int lane = supcon_emu::lane_id(), group = lane >> 2, pair = (lane & 3) * 2;
  for (int r0 = 0; r0 < M; r0 += 8)
    for (int c0 = 0; c0 < N; c0 += 8)
      for (int j = 0; j < 2; ++j) {
        const int r = r0 + group, c = c0 + pair + j;
        (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[r * N + c];
      }
}

// d = a . b + c in fp32 with exact products; computed once per warp and op (emu_runtime.h).
template <int M, int N, int K, typename T, class LA, class LB>
inline void mma_sync(fragment<accumulator, M, N, K, float, void>& d, const fragment<matrix_a, M, N, K, T, LA>& a,
                     const fragment<matrix_b, M, N, K, T, LB>& b, const fragment<accumulator, M, N, K, float, void>& c,
                     const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  const supcon_emu::MmaInputs in{{a.x, b.x, c.x}, {sizeof(a.x), sizeof(b.x), sizeof(c.x)}};
  supcon_emu::MmaMemo* memo = supcon_emu::mma_lookup(in, file, line);
  if (memo->result.empty()) {
    memo->result.resize(M * N);
    for (int i = 0; i < M; ++i)
      for (int j = 0; j < N; ++j) {
        float acc = c.x[i * N + j];
        for (int k = 0; k < K; ++k) acc += detail::to_float(a.x[i * K + k]) * detail::to_float(b.x[k * N + j]);
        memo->result[i * N + j] = acc;
      }
  }
  std::memcpy(d.x, memo->result.data(), sizeof(d.x));
}

}  // namespace wmma
}  // namespace nvcuda
