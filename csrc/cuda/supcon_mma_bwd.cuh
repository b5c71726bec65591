// The fp16 / bf16 backward in the FlashAttention-2 manner (used by supcon_cuda.cu for D <= 128):
// the same work as supcon_bwd_tile_kernel (supcon_kernels.cuh: rows, columns, H and the plan of
// supcon_plan.cuh), with S and H never in shared memory:
//   - S = Z_rows . Z_cols^T with mma.sync m16n8k16 on ldmatrix fragments (mma_s_tile, as the
//     forward): each warp owns 16 rows and the whole 64-column tile;
//   - H from the S accumulator fragments in registers, converted in place into the A operand of the
//     second mma (an m16n8 accumulator pair is exactly an m16k16 A fragment), out += H . Z_cols with
//     the column tile read through ldmatrix.trans; the output rows [16 x D] stay in registers;
//   - column tiles and their per-anchor statistics double-buffered with cp.async.
// exp(s - lse) on interior tiles is ex2(dot c2 - lse2) with c2 = log2(e) / T and lse2 = lse log2(e)
// (per anchor, once): one FFMA and the MUFU per term. Its exponent differs from (s - lse) log2(e) by
// a few ulps of s log2(e), the size of ex2.approx's own error (2 ulp) and far below the H tile's
// fp16 / bf16 rounding. The guarded tiles (edges, the diagonal: all of a small problem) form
// s = dot / T alone (mul_rn: not fused into what follows) and then s - lse, so an anchor whose only
// term is its own maximum (lse == s: the anchor of a two-row problem) gets exactly 1 and a gradient
// of exactly 0, as the reference.
// OPT: the loss options (supcon_options.cuh) on the guarded path only, every element classified twice
// (row anchor, column anchor); statistics g = gd and aux = gp (both scaled as g), lse and pv.
#pragma once

#include <cstdint>

#include "mma_ptx.cuh"
#include "supcon_mma_fwd.cuh"

namespace supcon_fast {
namespace SUPCON_CUDA_NS {

template <typename T, int DP_, bool OPT_ = false>
struct MmaBwd {
  using in_t = T;
  using st_t = float;
  static constexpr const char* kName = TcEngine<T>::kName;
  static constexpr int BM = 64, BN = 64, NT = 128, DP = DP_;
  static constexpr bool OPT = OPT_;
  static constexpr int NSTAT = OPT ? 4 : 5;  // per-column floats (kStat)
  static constexpr int KSTEPS = DP / 16;
  static constexpr int LDZ = DP + 8;  // halves, as the forward: 16-byte rows, conflict-free ldmatrix
  static_assert(DP == 64 || DP == 128, "the output rows [16 x DP] live in registers: D <= 128");
  // shared memory, bytes: row tile, two column-tile stages, two stages of column statistics
  // (floats: the default sets' g, lse and aux in base 2 for the interior tiles, lse and aux for the
  // guarded ones; OPT: gd, lse, gp, pv; then the labels, and OPT the ranks)
  static constexpr int kZr = align128(BM * LDZ * 2), kZc = align128(BN * LDZ * 2);
  static constexpr int kStat = align128(BN * (NSTAT * (int)sizeof(float) + (OPT ? 2 : 1) * (int)sizeof(label_t)));
  static constexpr int zr = 0, zc0 = kZr, stat0 = kZr + 2 * kZc;
  static constexpr int bytes = stat0 + 2 * kStat;
};

template <class C>
struct MmaBwdParams {
  const uint16_t* z;
  const label_t* labels;  // [R] dense class ids
  int64_t N, D, offset, M;
  plan::BwdPlan plan;  // gridDim.x == plan.blocks
  float inv_t;
  bool variant_in;
  bool vec;
  const float* g;
  const float* lse;
  const float* aux;
  const float* gmax;
  float* partial_heavy;
  float* partial_light;
  typename C::in_t* grad_out;
  // OPT only (supcon_options.cuh)
  SetRule rule;
  const float* pv;
};

constexpr float kLog2e = 1.44269504088896341f;

// One anchor's share of H_rc: g (exp(s - lse) - [same] ('in': exp(s - aux) | 'out': aux)), s - lse
// formed exactly (see the top of the file).
__device__ __forceinline__ float h_term(float dot, float inv_t, float g, float lse, float aux, bool same,
                                        bool variant_in) {
  const float s = ptx::mul_rn(dot, inv_t);
  float t = ptx::ex2((s - lse) * kLog2e);
  if (same) t -= variant_in ? ptx::ex2((s - aux) * kLog2e) : aux;
  return g * t;
}

// h_term without branches on g or (for 'out') on same, for the interior tiles, from the raw dot with
// c2 = log2(e) / T, lse2 = lse log2(e) and, for 'in', aux = pos log2(e): where g is 0 the
// caller passes lse = +inf and aux = +inf ('in') or 0 ('out'), so that t is exactly 0 and g t = 0, as
// the skipped term (s is finite). 'out': fma(-m, aux, t) with m = [same] in {0, 1} (shared by the
// row and the column term): m aux is exact (aux >= 0, finite), so it rounds as t - aux or gives t.
template <bool VIN>
__device__ __forceinline__ float h_term_nb(float dot, float c2, float g, float lse2, float aux, bool same, float m) {
  float t = ptx::ex2(fmaf(dot, c2, -lse2));
  if constexpr (VIN) {
    if (same) t -= ptx::ex2(fmaf(dot, c2, -aux));
  } else {
    t = fmaf(-m, aux, t);
  }
  return g * t;
}

// H of an interior tile (full, without the diagonal, all 64 rows valid) in the accumulator layout:
// acc[n][i] is row g + 8 (i >> 1), tile column 8 n + 2 t + (i & 1). Each lane reads its 2 columns
// of an n8 block (labels, g, lse, aux) once for both rows. hv = (0 + row term) + column term, as the
// guarded code sums it.
template <class C, bool VIN>
__device__ __forceinline__ void mma_h_interior(float (&acc)[C::BN / 8][4], const float* cg, const label_t* lab,
                                               const label_t (&rlab)[2], const float (&rg)[2], const float (&rlse)[2],
                                               const float (&raux)[2], float c2) {
  constexpr int BN = C::BN;
  const int t4 = threadIdx.x & 3;
#pragma unroll
  for (int n = 0; n < BN / 8; ++n) {
    const int c = n * 8 + 2 * t4;
    const label_t cl[2] = {lab[c], lab[c + 1]};
    const float gk[2] = {cg[c], cg[c + 1]}, lk[2] = {cg[BN + c], cg[BN + c + 1]},
                ak[2] = {cg[2 * BN + c], cg[2 * BN + c + 1]};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int h = i >> 1, e = i & 1;
      const bool same = cl[e] == rlab[h];
      const float m = same ? 1.f : 0.f;
      const float hr = h_term_nb<VIN>(acc[n][i], c2, rg[h], rlse[h], raux[h], same, m);
      const float hc = h_term_nb<VIN>(acc[n][i], c2, gk[e], lk[e], ak[e], same, m);
      acc[n][i] = (0.f + hr) + hc;
    }
  }
}

template <class C>
__global__ void __launch_bounds__(C::NT) supcon_bwd_mma_kernel(const MmaBwdParams<C> p) {
  using T = typename C::in_t;
  constexpr int BM = C::BM, BN = C::BN, NO = C::DP / 8;
  SUPCON_DYNAMIC_SHARED(unsigned char, smem);
  uint16_t* Zr = reinterpret_cast<uint16_t*>(smem + C::zr);
  auto zc = [&](int k) { return reinterpret_cast<uint16_t*>(smem + C::zc0 + k * C::kZc); };
  auto cstat = [&](int k) { return reinterpret_cast<float*>(smem + C::stat0 + k * C::kStat); };  // see kStat
  auto clab = [&](int k) { return reinterpret_cast<label_t*>(smem + C::stat0 + k * C::kStat + C::NSTAT * BN * 4); };
  auto crank = [&](int k) { return clab(k) + BN; };  // OPT

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, t4 = lane & 3;
  const plan::BwdItem item = plan::bwd_item(p.plan, blockIdx.x);
  const int64_t r0 = item.row_block * BM;
  const int rows_valid = (int)min((int64_t)BM, p.plan.grad_rows - r0);  // queue rows: no gradient
  const int64_t a_end = p.offset + p.M;
  const int64_t col_start = item.heavy ? 0 : p.offset;  // as the tile kernel: light blocks walk anchors only
  const int64_t ncols = item.heavy ? p.N : p.M;
  const bool cut = item.heavy ? p.plan.heavy_parts > 1 : p.plan.light_parts > 1;
  float* const partial = item.heavy ? p.partial_heavy : p.partial_light;
  const int64_t partial_rows = (item.heavy ? p.plan.heavy_count : p.plan.light_count) * BM;
  const int64_t partial_base = (item.part * partial_rows + item.partial_row0 * BM) * p.D;

  // H scaled by a power of two into fp16 range (see supcon_bwd_tile_kernel). The scale goes on g as it
  // is read (rows and columns) instead of on every H element: H = (0 + g_r t_r) + g_c t_c, and
  // (2^k g) t rounds to 2^k (g t) and 2^k a + 2^k b to 2^k (a + b) in fp32 unless a result leaves the
  // normal range; |2^k g| < 2^15 (k from max |g|) and |t| <= 1, so only a product below 2^-126 could
  // differ (flushed or rounded as a subnormal on one side), far under the fp16 / bf16 H it feeds.
  // g = 0 stays 0, so the stand-ins and the guarded code's g != 0 tests see the same zeros.
  float hscale = 1.f, unscale = 1.f;
  {
    const float gm = *p.gmax;
    if (gm > 0.f && isfinite(gm)) {
      int e = 0;
      frexpf(gm, &e);
      const int sh = max(-126, min(126, 14 - e));
      hscale = ldexpf(1.f, sh);
      unscale = ldexpf(1.f, -sh);
    }
  }

  const bool variant_in = p.variant_in;  // once, not a constant-bank load per use
  const float inv_t = p.inv_t;
  const float c2 = inv_t * kLog2e;  // dot -> exponent in base 2
  // This lane's two rows (g and g + 8 of the warp's 16) and their statistics, in registers: g scaled,
  // lse and aux as given (guarded tiles) and lse (and the 'in' pos term) in base 2 (interior tiles).
  int rl[2];
  int64_t gr[2];
  label_t rlab[2];
  float rg[2], rlse[2], raux[2], rlse_n[2], raux_n[2], rpv[2] = {0.f, 0.f};
  label_t rrank[2] = {0, 0};
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    rl[h] = warp * 16 + (lane >> 2) + 8 * h;
    gr[h] = r0 + rl[h];
    const bool valid = rl[h] < rows_valid, anchor = valid && gr[h] >= p.offset && gr[h] < a_end;
    rlab[h] = valid ? p.labels[gr[h]] : 0;
    rg[h] = anchor ? p.g[gr[h] - p.offset] * hscale : 0.f;  // 0: no anchor-side term
    rlse_n[h] = anchor ? p.lse[gr[h] - p.offset] : 0.f;
    raux_n[h] = anchor ? p.aux[gr[h] - p.offset] : 0.f;
    rlse[h] = rlse_n[h] * kLog2e;
    raux[h] = raux_n[h] * (variant_in ? kLog2e : 1.f);
    if constexpr (C::OPT) {  // gp scaled as g; lse, aux and pv as given (the guarded path's)
      raux_n[h] *= hscale;
      rpv[h] = anchor ? p.pv[gr[h] - p.offset] : 0.f;
      rrank[h] = valid ? p.rule.rank_of(gr[h]) : 0;
    }
  }
  // The interior tiles' stand-ins where g is 0 (h_term_nb); the guarded code reads lse and aux only
  // where g != 0, where they are not stand-ins.
  const float INF = __int_as_float(0x7f800000u);
  const float zaux = variant_in ? INF : 0.f;
  const float aux2 = variant_in ? kLog2e : 1.f;  // 'in': the pos term in base 2
  if constexpr (!C::OPT) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      rlse[h] = rg[h] != 0.f ? rlse[h] : INF;
      raux[h] = rg[h] != 0.f ? raux[h] : zaux;
    }
  }

  auto load_cols = [&](int stage, int64_t ct) {
    const int64_t c0 = ct * BN;
    const int cols_valid = (int)min((int64_t)BN, ncols - c0);
    mma_load_rows<C, BN>(zc(stage), p.z, p.D, col_start + c0, cols_valid, p.vec);
    float* st = cstat(stage);
    label_t* lab = clab(stage);
    for (int c = tid; c < BN; c += C::NT) {
      const int64_t gc = col_start + c0 + c;
      const bool valid = c < cols_valid, anchor = valid && gc >= p.offset && gc < a_end;
      lab[c] = valid ? p.labels[gc] : 0;
      const float g = anchor ? p.g[gc - p.offset] * hscale : 0.f;  // as the rows': scaled, base 2
      st[c] = g;
      if constexpr (C::OPT) {  // the host's values (finite, 0 where the anchor has no positive); gp scaled as g
        st[BN + c] = anchor ? p.lse[gc - p.offset] : 0.f;
        st[2 * BN + c] = anchor ? p.aux[gc - p.offset] * hscale : 0.f;
        st[3 * BN + c] = anchor ? p.pv[gc - p.offset] : 0.f;
        crank(stage)[c] = valid ? p.rule.rank_of(gc) : 0;
      } else {
        const float lse = g != 0.f ? p.lse[gc - p.offset] : 0.f, aux = g != 0.f ? p.aux[gc - p.offset] : 0.f;
        st[BN + c] = g != 0.f ? lse * kLog2e : INF;  // stand-ins where g is 0 (h_term_nb)
        st[2 * BN + c] = g != 0.f ? aux * aux2 : zaux;
        st[3 * BN + c] = lse;  // the guarded tiles' (read where g != 0 only)
        st[4 * BN + c] = aux;
      }
    }
  };

  mma_load_rows<C, BM>(Zr, p.z, p.D, r0, rows_valid, p.vec);
  if (item.tile_begin < item.tile_end) load_cols(0, item.tile_begin);
  ptx::cp_async_commit();

  float o[NO][4];
#pragma unroll
  for (int n = 0; n < NO; ++n)
#pragma unroll
    for (int i = 0; i < 4; ++i) o[n][i] = 0.f;

  int stage = 0;
  for (int64_t ct = item.tile_begin; ct < item.tile_end; ++ct) {
    if (ct + 1 < item.tile_end) load_cols(stage ^ 1, ct + 1);
    ptx::cp_async_commit();
    ptx::cp_async_wait<1>();
    __syncthreads();  // this stage's tile and statistics (and the row tile) are in place for every warp
    float acc[BN / 8][4];
    mma_s_tile<C>(acc, Zr, zc(stage));

    // H in the accumulator layout: acc[n][i] is row g + 8 (i >> 1), tile column 8 n + 2 t + (i & 1)
    const int64_t c0 = ct * BN;
    const int cols_valid = (int)min((int64_t)BN, ncols - c0);
    const float* cg = cstat(stage);
    const label_t* lab = clab(stage);
    // an interior tile (full, no diagonal, every row valid: the common case) runs branch-free
    const int64_t cc0 = col_start + c0;
    const bool interior = !C::OPT && rows_valid == BM && cols_valid == BN && (cc0 + BN <= r0 || cc0 >= r0 + BM);
    if (interior) {
      if (variant_in) mma_h_interior<C, true>(acc, cg, lab, rlab, rg, rlse, raux, c2);
      else mma_h_interior<C, false>(acc, cg, lab, rlab, rg, rlse, raux, c2);
    } else {
#pragma unroll
      for (int n = 0; n < BN / 8; ++n)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int h = i >> 1, c = n * 8 + 2 * t4 + (i & 1);
          const int64_t gc = cc0 + c;
          float hv = 0.f;
          if (C::OPT && c < cols_valid && rl[h] < rows_valid && gr[h] != gc) {
            const float s = ptx::mul_rn(acc[n][i], inv_t);
            const label_t* rk = crank(stage);
            if (rg[h] != 0.f || raux_n[h] != 0.f) {  // row anchor: column c in its sets
              const int set = p.rule.classify(rlab[h], rrank[h], lab[c], rk[c]);
              hv += opt_h_term(s, rg[h], rlse_n[h], raux_n[h], rpv[h], set, p.rule, variant_in);
            }
            if (cg[c] != 0.f || cg[2 * BN + c] != 0.f) {  // column anchor: row r in its sets
              const int set = p.rule.classify(lab[c], rk[c], rlab[h], rrank[h]);
              hv += opt_h_term(s, cg[c], cg[BN + c], cg[2 * BN + c], cg[3 * BN + c], set, p.rule, variant_in);
            }
          } else if (c < cols_valid && rl[h] < rows_valid && gr[h] != gc) {
            const bool same = lab[c] == rlab[h];
            if (rg[h] != 0.f) hv += h_term(acc[n][i], inv_t, rg[h], rlse_n[h], raux_n[h], same, variant_in);
            const float gk = cg[c];
            if (gk != 0.f) hv += h_term(acc[n][i], inv_t, gk, cg[3 * BN + c], cg[4 * BN + c], same, variant_in);
          }
          acc[n][i] = hv;
        }
    }

    // out[16 x DP] += H[16 x 64] . Zc[64 x DP]: k16 block kb of H is the accumulator pair (2 kb, 2 kb + 1)
    const int j = lane >> 3, r = lane & 7;
    const uint16_t* Zc = zc(stage);
#pragma unroll
    for (int kb = 0; kb < BN / 16; ++kb) {
      const uint32_t a[4] = {ptx::pack2<T>(acc[2 * kb][0], acc[2 * kb][1]), ptx::pack2<T>(acc[2 * kb][2], acc[2 * kb][3]),
                             ptx::pack2<T>(acc[2 * kb + 1][0], acc[2 * kb + 1][1]),
                             ptx::pack2<T>(acc[2 * kb + 1][2], acc[2 * kb + 1][3])};
#pragma unroll
      for (int dp = 0; dp < C::DP / 16; ++dp) {
        uint32_t b[4];  // matrices: columns 0-7 / 8-15 of the k block x d 0-7, then x d 8-15 (transposed)
        ptx::ldmatrix_x4_trans(b, Zc + (kb * 16 + (j & 1) * 8 + r) * C::LDZ + dp * 16 + (j >> 1) * 8);
        const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
        ptx::mma_16816<T>(o[2 * dp], a, b0, o[2 * dp]);
        ptx::mma_16816<T>(o[2 * dp + 1], a, b1, o[2 * dp + 1]);
      }
    }
    __syncthreads();  // every warp is done with this stage before it is refilled
    stage ^= 1;
  }
  ptx::cp_async_wait<0>();

  // grad rows (or this part's partials): o[n][i] is row g + 8 (i >> 1), column 8 n + 2 t + (i & 1)
  const float outscale = unscale * inv_t;
#pragma unroll
  for (int n = 0; n < NO; ++n)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int h = i >> 1;
      const int64_t d = n * 8 + 2 * t4 + (i & 1);
      if (rl[h] < rows_valid && d < p.D) {
        const float v = o[n][i] * outscale;
        if (cut) partial[partial_base + rl[h] * p.D + d] = v;
        else store_out(p.grad_out + (r0 + rl[h]) * p.D + d, v);
      }
    }
}

}  // namespace SUPCON_CUDA_NS
}  // namespace supcon_fast
