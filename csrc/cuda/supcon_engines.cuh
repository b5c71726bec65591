// Tile engines of the fused SupCon CUDA kernels (used by supcon_kernels.cuh):
//   TcEngine<half | bf16>: tensor cores via WMMA 16x16x16, fp32 accumulation;
//   SimtEngine<float | double>: plain FFMA (no TF32), so fp32 keeps fp32 accuracy.
// An engine fixes the block tile (BM x BN, D chunk BK, NT threads), the shared-memory leading
// dimensions, and provides the two GEMM steps on shared-memory tiles:
//   s_mma / s_store : S[BM x BN] = Zr . Zc^T (scaled by 1/T) into shared memory;
//   o_mma / o_flush : out[BM x BK] += H[BM x BN] . Zc[BN x BK], then (row, col, value) to a sink.
#pragma once

#include <cstdint>
#include <type_traits>

#include "cuda_compat.cuh"

namespace supcon_fast {
namespace SUPCON_CUDA_NS {

// ---------------------------------------------------------------------------------------------
// Small device helpers
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ float dev_neg_inf(float) { return __int_as_float(0xff800000u); }
__device__ __forceinline__ double dev_neg_inf(double) { return __longlong_as_double(0xfff0000000000000ull); }
__device__ __forceinline__ float dev_exp(float x) { return expf(x); }  // exact expf (no fast-math)
__device__ __forceinline__ double dev_exp(double x) { return exp(x); }
__device__ __forceinline__ float dev_log(float x) { return logf(x); }
__device__ __forceinline__ double dev_log(double x) { return log(x); }
__device__ __forceinline__ float dev_max(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double dev_max(double a, double b) { return fmax(a, b); }

__device__ __forceinline__ __half to_h16(float x, __half) { return __float2half_rn(x); }
__device__ __forceinline__ __nv_bfloat16 to_h16(float x, __nv_bfloat16) { return __float2bfloat16_rn(x); }

// Merge two (max, sum) online-softmax partials; -inf max means "empty".
template <typename T>
__device__ __forceinline__ void lse_merge(T& m, T& l, T m2, T l2) {
  const T mn = dev_max(m, m2);
  if (mn == dev_neg_inf(T())) return;  // both empty (m = -inf, l = 0 already)
  l = l * dev_exp(m - mn) + l2 * dev_exp(m2 - mn);  // exp(-inf - finite) = 0
  m = mn;
}

// The kernels' labels and cap ranks: dense class ids and ranks, 0 .. R - 1 (the host relabels the
// op's int64 labels without a host synchronization: supcon_inputs.h), so one 32-bit compare
// tests a pair.
using label_t = int32_t;

__host__ __device__ constexpr int align128(int bytes) { return (bytes + 127) / 128 * 128; }

// ---------------------------------------------------------------------------------------------
// Tensor-core engine (fp16 / bf16 inputs, fp32 accumulation): WMMA 16x16x16 fragments.
// Block 128 x 64 tile, 8 warps as 4 (rows) x 2 (cols); each warp owns 32 x 32 of S and
// 32 x BK/2 of the backward output chunk [BM x BK]. BK (the D chunk): 128, or 64 where a block may
// have only 99 KB of shared memory (the backward's layout at BK = 128 needs 107 KB).
// ---------------------------------------------------------------------------------------------
template <typename T, int BK_ = 128>  // __half or __nv_bfloat16
struct TcEngine {
  using in_t = T;
  using raw_t = uint16_t;  // smem / global copies move raw 16-bit words
  using st_t = float;      // S, statistics, epilogue math
  using h_t = T;           // H tile (A operand of the second GEMM)
  static constexpr const char* kName = std::is_same<T, __half>::value ? "fp16" : "bf16";
  static constexpr int BM = 128, BN = 64, BK = BK_, NT = 256;
  static constexpr int OJ = BK / 32;  // output fragments per warp along the chunk
  static_assert(BK % 32 == 0, "two warp columns of 16-wide fragments");
  static constexpr int LDK = BK + 8;  // halves; keeps fragment pointers 32-byte aligned, spreads banks
  static constexpr int LDS = BN + 4;  // floats
  static constexpr int LDH = BN + 8;  // halves
  static constexpr bool kScaleH = true;  // H is scaled into fp16 range (see bwd kernel)
  // The 'out' positive term: summed in this engine's forward epilogue in fp32 (the half-precision rule
  // allows it); the mma.sync forward takes it (and npos) from the fp64 class sums instead.
  static constexpr bool kExactOutPositives = false;
  // One 8-warp block per SM in the backward: ~210 registers, no spills (a 2-blocks bound spills ~600 B).
  static constexpr int kBwdMinBlocks = 1;
  static constexpr bool kVecLoad = true;

  using FragA = nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, T, nvcuda::wmma::row_major>;
  using FragBc = nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, T, nvcuda::wmma::col_major>;
  using FragBr = nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, T, nvcuda::wmma::row_major>;
  using FragC = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>;
  struct SAcc { FragC f[2][2]; };
  struct OAcc { FragC f[2][OJ]; };

  __host__ __device__ static constexpr int kpad(int kw) { return (kw + 15) / 16 * 16; }
  __device__ static int warp_r() { return (threadIdx.x >> 5) >> 1; }
  __device__ static int warp_c() { return (threadIdx.x >> 5) & 1; }

  __device__ static void s_zero(SAcc& a) {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) nvcuda::wmma::fill_fragment(a.f[i][j], 0.0f);
  }
  // a += Zr[BM x kpad] . Zc[BN x kpad]^T  (both row-major in smem, ld LDK)
  __device__ static void s_mma(SAcc& a, const raw_t* zr, const raw_t* zc, int kp) {
    const T* Zr = reinterpret_cast<const T*>(zr);
    const T* Zc = reinterpret_cast<const T*>(zc);
    const int wr = warp_r(), wc = warp_c();
    for (int k = 0; k < kp; k += 16) {
      FragA fa[2];
      FragBc fb[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) nvcuda::wmma::load_matrix_sync(fa[i], Zr + (wr * 32 + i * 16) * LDK + k, LDK);
#pragma unroll
      for (int j = 0; j < 2; ++j) nvcuda::wmma::load_matrix_sync(fb[j], Zc + (wc * 32 + j * 16) * LDK + k, LDK);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) nvcuda::wmma::mma_sync(a.f[i][j], fa[i], fb[j], a.f[i][j]);
    }
  }
  __device__ static void s_store(SAcc& a, float* S, float scale) {
    const int wr = warp_r(), wc = warp_c();
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
#pragma unroll
        for (int t = 0; t < a.f[i][j].num_elements; ++t) a.f[i][j].x[t] *= scale;
        nvcuda::wmma::store_matrix_sync(S + (wr * 32 + i * 16) * LDS + wc * 32 + j * 16, a.f[i][j], LDS,
                                        nvcuda::wmma::mem_row_major);
      }
  }
  __device__ static h_t to_h(float x) { return to_h16(x, T()); }
  __device__ static void o_zero(OAcc& a) {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < OJ; ++j) nvcuda::wmma::fill_fragment(a.f[i][j], 0.0f);
  }
  // a += H[BM x BN] . Zc[BN x BK]; output columns >= kp are all past D and skipped.
  __device__ static void o_mma(OAcc& a, const h_t* H, const raw_t* zc, int kp) {
    const T* Zc = reinterpret_cast<const T*>(zc);
    const int wr = warp_r(), wc = warp_c();
#pragma unroll
    for (int c = 0; c < BN; c += 16) {
      FragA fa[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) nvcuda::wmma::load_matrix_sync(fa[i], H + (wr * 32 + i * 16) * LDH + c, LDH);
#pragma unroll
      for (int j = 0; j < OJ; ++j) {
        const int col = wc * (BK / 2) + j * 16;
        if (col < kp) {  // warp-uniform
          FragBr fb;
          nvcuda::wmma::load_matrix_sync(fb, Zc + c * LDK + col, LDK);
#pragma unroll
          for (int i = 0; i < 2; ++i) nvcuda::wmma::mma_sync(a.f[i][j], fa[i], fb, a.f[i][j]);
        }
      }
    }
  }
  // Hands every (row, col, value) of the output chunk to sink; scratch: 8 warps x 256 floats.
  template <class Sink>
  __device__ static void o_flush(OAcc& a, float* scratch, int kp, Sink&& sink) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int wr = warp_r(), wc = warp_c();
    float* my = scratch + warp * 256;
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < OJ; ++j) {
        const int col = wc * (BK / 2) + j * 16;
        if (col >= kp) continue;  // warp-uniform
        nvcuda::wmma::store_matrix_sync(my, a.f[i][j], 16, nvcuda::wmma::mem_row_major);
        __syncwarp();
        for (int e = lane; e < 256; e += 32) sink(wr * 32 + i * 16 + (e >> 4), col + (e & 15), my[e]);
        __syncwarp();
      }
  }
};

// ---------------------------------------------------------------------------------------------
// FFMA engine (fp32 and fp64 inputs): plain fp32 (fp64) FMAs, so the fp32 path keeps full fp32
// accuracy (no TF32). 64 x 64 tile, 256 threads, 4 x 4 S micro-tile per thread (rows ty + 16 i,
// cols tx + 16 j: conflict-free smem reads with LDK = BK + 1). BK: 64 (fp32) / 32 (fp64), or 16 for
// fp64 where a block may have only 99 KB of shared memory.
// ---------------------------------------------------------------------------------------------
template <typename T, int BK_ = sizeof(T) == 4 ? 64 : 32>  // float or double
struct SimtEngine {
  using in_t = T;
  using raw_t = T;
  using st_t = T;
  using h_t = T;
  static constexpr const char* kName = sizeof(T) == 4 ? "fp32" : "fp64";
  static constexpr int BM = 64, BN = 64, BK = BK_, NT = 256;
  static_assert(BK % 16 == 0, "16 threads along the chunk");
  static constexpr int LDK = BK + 1, LDS = BN + 1, LDH = BN + 1;
  static constexpr int OJ = BK / 16;
  static constexpr bool kScaleH = false;
  // The 'out' positive term from fp64 class sums on the host side (as the CPU op): the mean of fp32
  // logits cancels at large norms and low temperature, and fp32 must stay within 1e-5 of fp64.
  static constexpr bool kExactOutPositives = true;
  static constexpr int kBwdMinBlocks = 1;
  static constexpr bool kVecLoad = false;
  struct SAcc { T v[4][4]; };
  struct OAcc { T v[4][OJ]; };

  __host__ __device__ static constexpr int kpad(int kw) { return kw; }
  __device__ static void s_zero(SAcc& a) {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) a.v[i][j] = T(0);
  }
  __device__ static void s_mma(SAcc& a, const raw_t* Zr, const raw_t* Zc, int kp) {
    const int ty = threadIdx.x >> 4, tx = threadIdx.x & 15;
    for (int k = 0; k < kp; ++k) {
      T ar[4], bc[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) ar[i] = Zr[(ty + 16 * i) * LDK + k];
#pragma unroll
      for (int j = 0; j < 4; ++j) bc[j] = Zc[(tx + 16 * j) * LDK + k];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) a.v[i][j] = fma(ar[i], bc[j], a.v[i][j]);
    }
  }
  __device__ static void s_store(SAcc& a, T* S, T scale) {
    const int ty = threadIdx.x >> 4, tx = threadIdx.x & 15;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) S[(ty + 16 * i) * LDS + tx + 16 * j] = a.v[i][j] * scale;
  }
  __device__ static h_t to_h(T x) { return x; }
  __device__ static void o_zero(OAcc& a) {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < OJ; ++j) a.v[i][j] = T(0);
  }
  __device__ static void o_mma(OAcc& a, const h_t* H, const raw_t* Zc, int /*kp*/) {
    const int ty = threadIdx.x >> 4, tx = threadIdx.x & 15;
    for (int c = 0; c < BN; ++c) {
      T h[4], zc[OJ];
#pragma unroll
      for (int i = 0; i < 4; ++i) h[i] = H[(ty + 16 * i) * LDH + c];
#pragma unroll
      for (int j = 0; j < OJ; ++j) zc[j] = Zc[c * LDK + tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < OJ; ++j) a.v[i][j] = fma(h[i], zc[j], a.v[i][j]);
    }
  }
  template <class Sink>
  __device__ static void o_flush(OAcc& a, T* /*scratch*/, int /*kp*/, Sink&& sink) {
    const int ty = threadIdx.x >> 4, tx = threadIdx.x & 15;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < OJ; ++j) sink(ty + 16 * i, tx + 16 * j, a.v[i][j]);
  }
};

// Shared-memory layout of the tiled kernels, in bytes: all of it is the launch's dynamic shared
// memory, so this is the one place that says how much a kernel needs (the host picks a tile
// configuration by it). Regions: the row and column tiles of z, the S tile, the H tile (backward),
// the labels of the block's rows and columns, and (backward) the rows' and columns' per-anchor g,
// lse and aux. OPT (the loss options, supcon_options.cuh): the rows' and columns' ranks after the
// labels, and a fourth statistic (pv) in the backward.
template <class E, bool OPT = false>
struct SmemLayout {
  using st_t = typename E::st_t;
  static constexpr int kZr = align128(E::BM * E::LDK * (int)sizeof(typename E::raw_t));
  static constexpr int kZc = align128(E::BN * E::LDK * (int)sizeof(typename E::raw_t));
  static constexpr int kS = align128(E::BM * E::LDS * (int)sizeof(st_t));
  static constexpr int kH = align128(E::BM * E::LDH * (int)sizeof(typename E::h_t));
  static constexpr int kLab = align128((OPT ? 2 : 1) * (E::BM + E::BN) * (int)sizeof(label_t));
  static constexpr int kStats = align128((OPT ? 4 : 3) * (E::BM + E::BN) * (int)sizeof(st_t));
  // offsets
  static constexpr int zr = 0, zc = kZr, s = kZr + kZc;
  static constexpr int fwd_lab = s + kS;
  static constexpr int h = s + kS, bwd_lab = h + kH, bwd_stats = bwd_lab + kLab;
  static constexpr int fwd_bytes = fwd_lab + kLab;
  static constexpr int bwd_bytes = bwd_stats + kStats;
};

// Copies rows [grow0, grow0 + rows_valid) x cols [k0, k0 + kw) of z [*, D] into dst [rows x BK]
// (ld LDK); everything else of the [rows x BK] tile is zero-filled, so padded rows/columns add 0
// to every dot product (never garbage times zero).
template <class E, int ROWS>
__device__ __forceinline__ void load_tile(typename E::raw_t* __restrict__ dst, const typename E::raw_t* __restrict__ z,
                                          int64_t D, int64_t grow0, int rows_valid, int64_t k0, int kw, bool vec) {
  using raw_t = typename E::raw_t;
  if constexpr (E::kVecLoad) {
    if (vec) {  // D % 8 == 0 and z 16-byte aligned: 8 halves per 16-byte vector
      constexpr int VPR = E::BK / 8;
      for (int idx = threadIdx.x; idx < ROWS * VPR; idx += E::NT) {
        const int t = idx / VPR, k = (idx % VPR) * 8;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (t < rows_valid && k < kw) v = *reinterpret_cast<const uint4*>(z + (grow0 + t) * D + k0 + k);
        *reinterpret_cast<uint4*>(dst + t * E::LDK + k) = v;
      }
      return;
    }
  }
  for (int idx = threadIdx.x; idx < ROWS * E::BK; idx += E::NT) {
    const int t = idx / E::BK, k = idx % E::BK;
    raw_t v = raw_t(0);
    if (t < rows_valid && k < kw) v = z[(grow0 + t) * D + k0 + k];
    dst[t * E::LDK + k] = v;
  }
}

}  // namespace SUPCON_CUDA_NS
}  // namespace supcon_fast
