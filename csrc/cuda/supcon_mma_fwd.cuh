// The fp16 / bf16 forward in the FlashAttention-2 manner (used by supcon_cuda.cu for D <= 256):
//   - S = Z_rows . Z_cols^T with mma.sync m16n8k16 on ldmatrix fragments (mma_ptx.cuh): each warp
//     owns 16 anchor rows and the whole 64-column tile, so S stays in registers (the accumulator
//     fragments) and never goes through shared memory;
//   - one pass per tile: per-row online max and sum ('in': also over the positives) in registers,
//     the exponentials in base 2 (log2(e) folded into the scale, exp2 on the MUFU unit), reduced over
//     the 4 lanes that share a row with two shuffles;
//   - column tiles double-buffered with cp.async: the next tile loads while this one is computed.
// The anchor tile [BM x DP] stays in shared memory for the whole block. Output: one FwdPartial per
// (split, anchor) in natural-log units, merged by supcon_fwd_finalize_kernel (supcon_kernels.cuh).
// 'out' (the default) needs nothing of the positives per element: its positive term and npos come
// from fp64 class sums on the host side (class_stats in supcon_cuda.cu), so its tiles read no labels.
// OPT: the loss options (supcon_options.cuh) on the guarded path only (every element classified),
// including the 'one_positive' second pass.
#pragma once

#include <cstdint>

#include "mma_ptx.cuh"
#include "supcon_kernels.cuh"
#include "supcon_options.cuh"

namespace supcon_fast {
namespace SUPCON_CUDA_NS {

// Tile configuration of the forward for D padded to DP (a multiple of 64, at most 256); OPT: with
// the loss options.
template <typename T, int DP_, bool OPT_ = false>
struct MmaFwd {
  using in_t = T;
  using E = TcEngine<T>;                   // the FwdPartial layout and finalize kernel it shares
  static constexpr const char* kName = E::kName;
  static constexpr int BM = 64, BN = 64, NT = 128, DP = DP_;
  static constexpr bool OPT = OPT_;
  static constexpr int KSTEPS = DP / 16;
  static constexpr int LDZ = DP + 8;       // halves: 16-byte rows, the 8 rows of an ldmatrix on distinct banks
  static_assert(DP % 64 == 0 && DP <= 256, "D padded to 64, 128, 192 or 256");
  // shared memory, bytes: anchor tile, two column-tile stages, row labels, two stages of column
  // labels; OPT: the same for the ranks
  static constexpr int kZr = align128(BM * LDZ * 2), kZc = align128(BN * LDZ * 2);
  static constexpr int kLab = align128((BM + 2 * BN) * (int)sizeof(label_t));
  static constexpr int zr = 0, zc0 = kZr, lab = kZr + 2 * kZc, rank = lab + kLab;
  static constexpr int bytes = rank + (OPT ? kLab : 0);
};

// Rows [row0, row0 + rows_valid) of z, all D columns, into dst [ROWS x DP] (ld LDZ), the rest zero:
// 16-byte cp.async copies (zero-filled past the valid rows and D) where z allows them, else plain
// loads. The copies land at the caller's cp_async_wait.
template <class C, int ROWS>
__device__ __forceinline__ void mma_load_rows(uint16_t* __restrict__ dst, const uint16_t* __restrict__ z, int64_t D,
                                              int64_t row0, int rows_valid, bool vec) {
  constexpr int CPR = C::DP / 8;  // 16-byte chunks per row
  if constexpr (C::NT % CPR == 0 && ROWS % (C::NT / CPR) == 0) {
    // each thread copies one chunk column k of every RS-th row: the addresses step by a constant
    constexpr int RS = C::NT / CPR;
    const int r = threadIdx.x / CPR, k = (threadIdx.x % CPR) * 8;
    const bool full = rows_valid == ROWS && k < D;
    if (vec && full) {
      const uint16_t* src = z + (row0 + r) * D + k;
      const int64_t step = RS * D;
#pragma unroll
      for (int i = 0; i < ROWS / RS; ++i) ptx::cp_async_16(dst + (r + i * RS) * C::LDZ + k, src + i * step, true);
      return;
    }
  }
  if (vec) {
    for (int idx = threadIdx.x; idx < ROWS * CPR; idx += C::NT) {
      const int r = idx / CPR, k = (idx % CPR) * 8;
      const bool ok = r < rows_valid && k < D;
      ptx::cp_async_16(dst + r * C::LDZ + k, ok ? z + (row0 + r) * D + k : z, ok);
    }
    return;
  }
  for (int idx = threadIdx.x; idx < ROWS * C::DP; idx += C::NT) {
    const int r = idx / C::DP, k = idx % C::DP;
    dst[r * C::LDZ + k] = r < rows_valid && k < D ? z[(row0 + r) * D + k] : uint16_t(0);
  }
}

// acc[n][i] += (this warp's 16 rows of Zr) . (columns 8 n .. 8 n + 7 of Zc)^T over all of DP.
template <class C>
__device__ __forceinline__ void mma_s_tile(float (&acc)[C::BN / 8][4], const uint16_t* Zr, const uint16_t* Zc) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int j = lane >> 3, r = lane & 7;  // this lane's row address: row r of matrix j of the x4
#pragma unroll
  for (int n = 0; n < C::BN / 8; ++n)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[n][i] = 0.f;
#pragma unroll
  for (int ks = 0; ks < C::KSTEPS; ++ks) {
    uint32_t a[4];  // matrices: rows 0-7 / 8-15 x k 0-7, then the same x k 8-15
    ptx::ldmatrix_x4(a, Zr + (warp * 16 + (j & 1) * 8 + r) * C::LDZ + ks * 16 + (j >> 1) * 8);
#pragma unroll
    for (int np = 0; np < C::BN / 16; ++np) {
      uint32_t b[4];  // matrices: columns 0-7 x k 0-7, k 8-15, then columns 8-15 x k 0-7, k 8-15
      ptx::ldmatrix_x4(b, Zc + (np * 16 + (j >> 1) * 8 + r) * C::LDZ + ks * 16 + (j & 1) * 8);
      const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
      ptx::mma_16816<typename C::in_t>(acc[2 * np], a, b0, acc[2 * np]);
      ptx::mma_16816<typename C::in_t>(acc[2 * np + 1], a, b1, acc[2 * np + 1]);
    }
  }
}

__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
template <typename V>
__device__ __forceinline__ V quad_sum(V v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// The running statistics of one anchor row. Maxima and sums of logits are kept as raw dot products
// (s = dot / T), so that they convert to natural units as the reference rounds them (fl(dot / T));
// the exponentials run in base 2 on dot log2(e) / T.
struct RowStats {
  float m, l;    // max dot, and sum of exp(s - m / T) over the contrast set (this lane's columns)
  float pm, pl;  // 'in': the same over the positives
  int np;        // 'in' and the options: positives (the default sets' 'out' takes npos from the class sizes)
  float ps;      // the options: 'out' sum of dot over the positives; acc1 in the second pass
  // m and pm in base-2 exponent units, m * log2(e) / T rounded once: the rescale of l by
  // ex2(m2 - mn2) is exactly 1 while the max holds. (From m, ex2(m * scale2 - mn2) would be
  // contracted into an FFMA by nvcc and multiply l by 2^(rounding error of mn2) at every tile
  // the max holds: a drift over thousands of tiles.) Each term's exponent, the FFMA
  // v * scale2 - mn2, carries the same offset as l's rescaled terms, so l stays consistent.
  float m2, pm2;
};

// This lane's two rows' values in a tile (row h: warp row g + 8 h; column c of the tile:
// 8 n + 2 t + e) into their stats. INTERIOR: a full column tile without the diagonal (every column
// < N, no anchor row of the block among the columns), so no bounds and diagonal checks. VIN ('in'):
// also the positives' max and sum, the column labels of the lane's 16 columns read once for both
// rows; 'out' reads no labels. Every lane of the warp calls it (shuffles inside). Per row, every
// sum and maximum runs over the columns in the same order whichever path is taken, so the two paths
// give the same bits on an interior tile.
template <class C, bool INTERIOR, bool VIN>
__device__ __forceinline__ void mma_rows_update(RowStats (&st)[2], const float (&acc)[C::BN / 8][4], float scale2,
                                                int64_t c0, int64_t N, const int64_t (&grow)[2],
                                                const label_t (&ylab)[2], const label_t* clab) {
  constexpr int K = C::BN / 4;
  const float NEG_INF = __int_as_float(0xff800000u);
  const int t = threadIdx.x & 3;
  float v[2][K];          // dot, or -inf off the contrast set
  bool sm[VIN ? 2 : 1][VIN ? K : 1];  // 'in': the positives, for the second pass
  float tmax[2] = {NEG_INF, NEG_INF}, pmax[2] = {NEG_INF, NEG_INF};
#pragma unroll
  for (int n = 0; n < C::BN / 8; ++n) {
    label_t lab[2] = {0, 0};
    if constexpr (VIN) {
      lab[0] = clab[n * 8 + 2 * t];
      lab[1] = clab[n * 8 + 2 * t + 1];
    }
#pragma unroll
    for (int e = 0; e < 2; ++e)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int k = 2 * n + e;
        const int64_t gc = c0 + n * 8 + 2 * t + e;
        const bool ok = INTERIOR || (gc < N && gc != grow[h]);  // a column of z, not the anchor itself
        v[h][k] = ok ? acc[n][2 * h + e] : NEG_INF;
        tmax[h] = fmaxf(tmax[h], v[h][k]);
        if constexpr (VIN) {
          const bool same = ok && lab[e] == ylab[h];
          sm[h][k] = same;
          if (same) pmax[h] = fmaxf(pmax[h], v[h][k]);
        }
      }
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const float rmax = quad_max(tmax[h]);
    const float mn = fmaxf(st[h].m, rmax);
    if (mn != NEG_INF) {  // the same in the 4 lanes of the row
      const float mn2 = mn * scale2;
      // the sum starts at the first term, not at 0 (0 + x is an FADD the compiler must keep, for -0)
      float sum = ptx::ex2(fmaf(v[h][0], scale2, -mn2));  // exp2(-inf) = 0
#pragma unroll
      for (int k = 1; k < K; ++k) sum += ptx::ex2(fmaf(v[h][k], scale2, -mn2));
      st[h].l = st[h].l * ptx::ex2(st[h].m2 - mn2) + sum;  // exactly 1 while the max holds
      st[h].m = mn;
      st[h].m2 = mn2;
    }
    if constexpr (VIN) {
      const float pmn = fmaxf(st[h].pm, quad_max(pmax[h]));
#pragma unroll
      for (int k = 0; k < K; ++k) st[h].np += sm[h][k] ? 1 : 0;
      if (pmn != NEG_INF) {
        const float pmn2 = pmn * scale2;
        float psum = sm[h][0] ? ptx::ex2(fmaf(v[h][0], scale2, -pmn2)) : 0.f;
#pragma unroll
        for (int k = 1; k < K; ++k) psum += sm[h][k] ? ptx::ex2(fmaf(v[h][k], scale2, -pmn2)) : 0.f;
        st[h].pl = st[h].pl * ptx::ex2(st[h].pm2 - pmn2) + psum;
        st[h].pm = pmn;
        st[h].pm2 = pmn2;
      }
    }
  }
}

// The options' version of mma_rows_update, guarded on every tile (bounds, diagonal, sets): this lane's
// two rows' values in a tile into their stats. Pass 1: the denominator set's max and sum, the
// positives' ('in') or their dots' sum ('out') and count. The 'one_positive' second pass (uniform):
// acc1 and acc2 into ps and pl, in natural units given the rows' nl (supcon_options.cuh).
template <class C>
__device__ __forceinline__ void mma_rows_update_opt(RowStats (&st)[2], const float (&acc)[C::BN / 8][4], float scale2,
                                                    float inv_t, int64_t c0, int64_t N, const int64_t (&grow)[2],
                                                    const label_t (&ylab)[2], const label_t (&yrank)[2],
                                                    const label_t* clab, const label_t* crank, const SetRule& rule,
                                                    bool vin, bool second_pass, const float (&nl)[2]) {
  constexpr int K = C::BN / 4;
  const float NEG_INF = __int_as_float(0xff800000u);
  const int t = threadIdx.x & 3;
  float v[2][K], pv[2][K];  // dot in the denominator set / of a positive, else -inf
  float tmax[2] = {NEG_INF, NEG_INF}, pmax[2] = {NEG_INF, NEG_INF};
#pragma unroll
  for (int n = 0; n < C::BN / 8; ++n)
#pragma unroll
    for (int e = 0; e < 2; ++e)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int c = n * 8 + 2 * t + e, k = 2 * n + e;
        const bool ok = c0 + c < N && c0 + c != grow[h];
        const int set = ok ? rule.classify(ylab[h], yrank[h], clab[c], crank[c]) : kSetExcluded;
        const float a = acc[n][2 * h + e];
        const bool pos = set == kSetPositive;
        v[h][k] = rule.in_denominator(set) ? a : NEG_INF;
        pv[h][k] = pos ? a : NEG_INF;
        if (second_pass) {
          if (pos) {
            const float s = a * inv_t;
            st[h].ps += vin ? dev_sigmoid(s - nl[h]) : dev_softplus(nl[h] - s);
            st[h].pl += vin ? dev_sigmoid(s - nl[h]) * dev_sigmoid(nl[h] - s) : dev_sigmoid(nl[h] - s);
          }
          continue;
        }
        tmax[h] = fmaxf(tmax[h], v[h][k]);
        pmax[h] = fmaxf(pmax[h], pv[h][k]);
        st[h].np += pos ? 1 : 0;
        if (!vin && pos) st[h].ps += a;
      }
  if (second_pass) return;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const float mn = fmaxf(st[h].m, quad_max(tmax[h]));
    if (mn != NEG_INF) {  // the same in the 4 lanes of the row
      const float mn2 = mn * scale2;
      float sum = ptx::ex2(fmaf(v[h][0], scale2, -mn2));
#pragma unroll
      for (int k = 1; k < K; ++k) sum += ptx::ex2(fmaf(v[h][k], scale2, -mn2));
      st[h].l = st[h].l * ptx::ex2(st[h].m2 - mn2) + sum;  // exactly 1 while the max holds
      st[h].m = mn;
      st[h].m2 = mn2;
    }
    if (vin) {
      const float pmn = fmaxf(st[h].pm, quad_max(pmax[h]));
      if (pmn != NEG_INF) {
        const float pmn2 = pmn * scale2;
        float psum = ptx::ex2(fmaf(pv[h][0], scale2, -pmn2));
#pragma unroll
        for (int k = 1; k < K; ++k) psum += ptx::ex2(fmaf(pv[h][k], scale2, -pmn2));
        st[h].pl = st[h].pl * ptx::ex2(st[h].pm2 - pmn2) + psum;
        st[h].pm = pmn;
        st[h].pm2 = pmn2;
      }
    }
  }
}

template <class C>
struct MmaFwdParams {
  const uint16_t* z;
  const label_t* labels;  // [R] dense class ids
  int64_t N, D, offset, M;
  int64_t tiles_per_split;
  float inv_t;
  bool variant_in;
  bool vec;
  FwdPartial<typename C::E>* ws;  // [splits, M]
  // OPT only (supcon_options.cuh)
  SetRule rule;
  bool second_pass;
  const float* nl;  // [M] the first pass's lse (second pass)
};

template <class C>
__global__ void __launch_bounds__(C::NT) supcon_fwd_mma_kernel(const MmaFwdParams<C> p) {
  constexpr int BM = C::BM, BN = C::BN;
  SUPCON_DYNAMIC_SHARED(unsigned char, smem);
  uint16_t* Zr = reinterpret_cast<uint16_t*>(smem + C::zr);
  label_t* rlab = reinterpret_cast<label_t*>(smem + C::lab);  // [BM]
  // stage k's column tile and labels ([BN] each), by address arithmetic (an array of the two
  // pointers indexed by the runtime stage would live in local memory)
  auto zc = [&](int k) { return reinterpret_cast<uint16_t*>(smem + C::zc0 + k * C::kZc); };
  auto clab = [&](int k) { return rlab + BM + k * BN; };
  label_t* rrank = reinterpret_cast<label_t*>(smem + C::rank);  // OPT: [BM], then two stages of [BN]
  auto crank = [&](int k) { return rrank + BM + k * BN; };

  const float NEG_INF = __int_as_float(0xff800000u);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t r0 = (int64_t)blockIdx.x * BM;  // anchor-local first row
  const int rows_valid = (int)min((int64_t)BM, p.M - r0);
  const int64_t nct = (p.N + BN - 1) / BN;
  const int64_t ct_begin = (int64_t)blockIdx.y * p.tiles_per_split;
  const int64_t ct_end = ptx::keep(min(nct, ct_begin + p.tiles_per_split));
  const float scale2 = p.inv_t * 1.44269504088896341f;  // 1/T and log2(e) in one factor
  const bool variant_in = p.variant_in;                  // once, not a constant-bank load per use
  const int64_t a0 = p.offset + r0;                       // the block's first anchor row in z

  auto load_cols = [&](int stage, int64_t ct) {
    const int64_t c0 = ct * BN;
    const int cols_valid = (int)min((int64_t)BN, p.N - c0);
    mma_load_rows<C, BN>(zc(stage), p.z, p.D, c0, cols_valid, p.vec);
    label_t* lab = clab(stage);
    // the default sets' 'out' reads no labels
    for (int c = tid; c < (variant_in ? BN : C::OPT ? BN : 0); c += C::NT) lab[c] = c < cols_valid ? p.labels[c0 + c] : 0;
    if constexpr (C::OPT)
      for (int c = tid; c < BN; c += C::NT) crank(stage)[c] = c < cols_valid ? p.rule.rank_of(c0 + c) : 0;
  };

  for (int r = tid; r < BM; r += C::NT)
    rlab[r] = r < rows_valid && (variant_in || C::OPT) ? p.labels[p.offset + r0 + r] : 0;
  if constexpr (C::OPT)
    for (int r = tid; r < BM; r += C::NT) rrank[r] = r < rows_valid ? p.rule.rank_of(p.offset + r0 + r) : 0;
  mma_load_rows<C, BM>(Zr, p.z, p.D, p.offset + r0, rows_valid, p.vec);
  if (ct_begin < ct_end) load_cols(0, ct_begin);
  ptx::cp_async_commit();
  __syncthreads();  // rlab

  // This lane's two rows: warp's row g and g + 8 (g = lane / 4), block-local.
  const int rl[2] = {warp * 16 + (lane >> 2), warp * 16 + (lane >> 2) + 8};
  const int64_t grow[2] = {p.offset + r0 + rl[0], p.offset + r0 + rl[1]};
  const label_t ylab[2] = {rlab[rl[0]], rlab[rl[1]]};
  label_t yrank[2] = {0, 0};
  float nl[2] = {0.f, 0.f};  // OPT, second pass
  if constexpr (C::OPT) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      yrank[h] = rrank[rl[h]];
      if (p.second_pass && rl[h] < rows_valid) nl[h] = p.nl[r0 + rl[h]];
    }
  }
  RowStats st[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) st[h] = RowStats{NEG_INF, 0.f, NEG_INF, 0.f, 0, 0.f, NEG_INF, NEG_INF};

  int stage = 0;
  for (int64_t ct = ct_begin; ct < ct_end; ++ct) {
    if (ct + 1 < ct_end) load_cols(stage ^ 1, ct + 1);  // the next tile, while this one is computed
    ptx::cp_async_commit();
    ptx::cp_async_wait<1>();  // all but the newest group: this tile (and the anchor tile) landed
    __syncthreads();
    float acc[BN / 8][4];
    mma_s_tile<C>(acc, Zr, zc(stage));
    // an interior tile (full, without the diagonal: the common case) skips the bounds and diagonal checks
    const int64_t c0 = ct * BN;
    const bool interior = c0 + BN <= p.N && (c0 + BN <= a0 || c0 >= a0 + BM);
    if constexpr (C::OPT) {
      mma_rows_update_opt<C>(st, acc, scale2, p.inv_t, c0, p.N, grow, ylab, yrank, clab(stage), crank(stage), p.rule,
                             variant_in, p.second_pass, nl);
    } else if (interior) {
      if (variant_in) mma_rows_update<C, true, true>(st, acc, scale2, c0, p.N, grow, ylab, clab(stage));
      else mma_rows_update<C, true, false>(st, acc, scale2, c0, p.N, grow, ylab, clab(stage));
    } else {
      if (variant_in) mma_rows_update<C, false, true>(st, acc, scale2, c0, p.N, grow, ylab, clab(stage));
      else mma_rows_update<C, false, false>(st, acc, scale2, c0, p.N, grow, ylab, clab(stage));
    }
    __syncthreads();  // every warp is done with this stage before the next iteration refills it
    stage ^= 1;
  }
  ptx::cp_async_wait<0>();

#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const float l = quad_sum(st[h].l), pl = quad_sum(st[h].pl);
    const int np = quad_sum(st[h].np);
    const float ps = C::OPT ? quad_sum(st[h].ps) : 0.f;
    if ((lane & 3) == 0 && rl[h] < rows_valid) {
      FwdPartial<typename C::E>& w = p.ws[(int64_t)blockIdx.y * p.M + r0 + rl[h]];
      w.m = st[h].m * p.inv_t;  // natural units, rounded as the reference rounds s = dot / T
      w.l = l;
      w.pm = st[h].pm * p.inv_t;
      w.pl = pl;
      // the default sets' 'out': the finalize kernel takes the positive term and npos from class sums;
      // the options' second pass: acc1, in natural units already
      w.ps = C::OPT ? (p.second_pass ? ps : ps * p.inv_t) : 0.f;
      w.npos = np;  // 'in' and the options; 0 for the default sets' 'out'
    }
  }
}

}  // namespace SUPCON_CUDA_NS
}  // namespace supcon_fast
