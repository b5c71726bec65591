// Fused SupCon CUDA kernels: the tiled forward / backward, built on the tile engines of
// supcon_engines.cuh (tensor-core WMMA for fp16/bf16, FFMA for fp32/fp64). Host code: supcon_cuda.cu.
//
// A block owns BM rows of z and walks BN-column tiles of its column range. For each tile it computes
// S = Z_rows . Z_cols^T / T over D in chunks of BK (smem tiles, fp32 accumulation), stores S to shared
// memory, and runs an elementwise epilogue that knows every element's global row and column:
//   forward : rows = anchors; online max + sum per row (LSE), plus the label-masked positive
//             statistics ('out': sum of s over positives; 'in': a second online max + sum);
//   backward: rows = all of z; H_rc = [r anchor] G_rc + [c anchor] G_cr, then out += H . Z_cols, so
//             grad[r] = sum_c H_rc z_c / T (anchor side and contrast side from one S tile). With
//             anchors == contrast set this is the symmetric case, grad_i = sum_j (G_ij + G_ji) z_j / T.
// The diagonal (global row == global column) is excluded everywhere.
#pragma once

#include <cstdint>

#include "supcon_engines.cuh"
#include "supcon_options.cuh"
#include "supcon_plan.cuh"

namespace supcon_fast {
namespace SUPCON_CUDA_NS {

// ---------------------------------------------------------------------------------------------
// Forward: rows = anchors (global offset + i), columns = all N rows; grid (row blocks, splits).
// Writes one FwdPartial per (split, anchor); the finalize kernel merges the splits. Positives are
// counted here, from the label pairs the epilogue compares anyway: no host synchronization.
// ---------------------------------------------------------------------------------------------
template <class E>
struct FwdPartial {
  typename E::st_t m, l;    // (max, sum) of exp(s) over the contrast set of this split
  typename E::st_t pm, pl;  // 'in': (max, sum) of exp(s) over the positives
  typename E::st_t ps;      // 'out': sum of s over the positives
  int64_t npos;             // positives seen
};

template <class E>
struct FwdParams {
  const typename E::raw_t* z;
  const label_t* labels;  // [R] dense class ids
  int64_t N, D, offset, M;
  int64_t tiles_per_split;
  typename E::st_t inv_t;
  bool variant_in;
  bool vec;
  FwdPartial<E>* ws;  // [splits, M]
  // the loss options (OPT kernels only, supcon_options.cuh)
  SetRule rule;
  bool second_pass;              // 'one_positive': the positives' terms given nl
  const typename E::st_t* nl;    // [M] the first pass's lse (second pass)
};

// OPT: the loss options (supcon_options.cuh); without them the default sets, as compiled before.
template <class E, bool OPT = false>
__global__ void __launch_bounds__(E::NT) supcon_fwd_tile_kernel(const FwdParams<E> p) {
  using st_t = typename E::st_t;
  using raw_t = typename E::raw_t;
  using L = SmemLayout<E, OPT>;
  constexpr int BM = E::BM, BN = E::BN, BK = E::BK, NT = E::NT;
  constexpr int TPR = NT / BM;  // threads per row in the epilogue (2 or 4), adjacent lanes
  static_assert(NT % BM == 0 && (TPR == 2 || TPR == 4), "epilogue thread mapping");
  SUPCON_DYNAMIC_SHARED(unsigned char, smem);
  raw_t* Zr = reinterpret_cast<raw_t*>(smem + L::zr);
  raw_t* Zc = reinterpret_cast<raw_t*>(smem + L::zc);
  st_t* S = reinterpret_cast<st_t*>(smem + L::s);
  label_t* rs_lab = reinterpret_cast<label_t*>(smem + L::fwd_lab);  // [BM] labels of the block's rows
  label_t* cs_lab = rs_lab + BM;                                     // [BN] labels of the tile's columns
  label_t* rs_rank = cs_lab + BN;                                    // OPT: [BM] ranks of the rows
  label_t* cs_rank = rs_rank + BM;                                   // OPT: [BN] ranks of the columns

  const st_t NEG_INF = dev_neg_inf(st_t());
  const int tid = threadIdx.x;
  const int64_t r0 = (int64_t)blockIdx.x * BM;  // anchor-local first row
  const int rows_valid = (int)min((int64_t)BM, p.M - r0);
  const int64_t nct = (p.N + BN - 1) / BN;
  const int64_t ct_begin = (int64_t)blockIdx.y * p.tiles_per_split;
  const int64_t ct_end = min(nct, ct_begin + p.tiles_per_split);
  const int nk = (int)((p.D + BK - 1) / BK);

  for (int r = tid; r < BM; r += NT) rs_lab[r] = r < rows_valid ? p.labels[p.offset + r0 + r] : 0;
  if constexpr (OPT)
    for (int r = tid; r < BM; r += NT) rs_rank[r] = r < rows_valid ? p.rule.rank_of(p.offset + r0 + r) : 0;

  const int my_r = tid / TPR, my_h = tid % TPR;
  const int64_t my_gr = p.offset + r0 + my_r;  // global row of this thread's anchor
  st_t m = NEG_INF, l = st_t(0);               // all columns j != a
  st_t pm = NEG_INF, pl = st_t(0);             // 'in': positives
  st_t ps = st_t(0);                           // 'out': sum of s over positives
  int64_t np = 0;                              // positives
  int zr_chunk = -1;

  for (int64_t ct = ct_begin; ct < ct_end; ++ct) {
    const int64_t c0 = ct * BN;
    const int cols_valid = (int)min((int64_t)BN, p.N - c0);
    __syncthreads();  // previous tile's epilogue is done with S and cs_lab
    for (int c = tid; c < BN; c += NT) cs_lab[c] = c < cols_valid ? p.labels[c0 + c] : 0;
    if constexpr (OPT)
      for (int c = tid; c < BN; c += NT) cs_rank[c] = c < cols_valid ? p.rule.rank_of(c0 + c) : 0;
    typename E::SAcc acc;
    E::s_zero(acc);
    for (int kc = 0; kc < nk; ++kc) {
      if (kc > 0) __syncthreads();  // previous chunk's s_mma is done with Zr / Zc
      const int64_t k0 = (int64_t)kc * BK;
      const int kw = (int)min((int64_t)BK, p.D - k0);
      if (zr_chunk != kc) {  // block-uniform; with D <= BK the anchor tile is loaded once
        load_tile<E, BM>(Zr, p.z, p.D, p.offset + r0, rows_valid, k0, kw, p.vec);
        zr_chunk = kc;
      }
      load_tile<E, BN>(Zc, p.z, p.D, c0, cols_valid, k0, kw, p.vec);
      __syncthreads();
      E::s_mma(acc, Zr, Zc, E::kpad(kw));
    }
    E::s_store(acc, S, p.inv_t);
    __syncthreads();  // S, cs_lab, rs_lab visible

    if constexpr (OPT) {
      if (my_r < rows_valid) {
        OptRowStats<st_t> o{m, l, pm, pl, ps, np};
        opt_fwd_row(o, S + my_r * E::LDS, cs_lab, cs_rank, my_h, TPR, cols_valid, c0, my_gr, rs_lab[my_r],
                    rs_rank[my_r], p.rule, p.variant_in, p.second_pass, p.second_pass ? p.nl[r0 + my_r] : st_t(0));
        m = o.m, l = o.l, pm = o.pm, pl = o.pl, ps = o.ps, np = o.np;
      }
    } else if (my_r < rows_valid) {
      const st_t* Srow = S + my_r * E::LDS;
      const label_t ya = rs_lab[my_r];
      st_t tmax = NEG_INF, tpmax = NEG_INF;
      for (int c = my_h; c < cols_valid; c += TPR) {
        if (c0 + c == my_gr) continue;  // the anchor itself
        const st_t s = Srow[c];
        tmax = dev_max(tmax, s);
        if (cs_lab[c] == ya) {
          ++np;
          tpmax = dev_max(tpmax, s);
        }
      }
      const st_t mn = dev_max(m, tmax);
      if (mn != NEG_INF) {
        st_t sum = st_t(0), psum = st_t(0);
        const st_t pmn = dev_max(pm, tpmax);
        for (int c = my_h; c < cols_valid; c += TPR) {
          if (c0 + c == my_gr) continue;
          const st_t s = Srow[c];
          sum += dev_exp(s - mn);
          if (cs_lab[c] == ya) {
            if (p.variant_in) psum += dev_exp(s - pmn);  // pmn is finite: a positive is here
            else ps += s;
          }
        }
        l = l * dev_exp(m - mn) + sum;
        m = mn;
        if (p.variant_in && pmn != NEG_INF) {
          pl = pl * dev_exp(pm - pmn) + psum;
          pm = pmn;
        }
      }
    }
  }

  // Combine the TPR partials of a row (adjacent lanes of one warp); every lane takes part.
#pragma unroll
  for (int o = 1; o < TPR; o <<= 1) {
    const st_t m2 = __shfl_xor_sync(0xffffffffu, m, o), l2 = __shfl_xor_sync(0xffffffffu, l, o);
    const st_t pm2 = __shfl_xor_sync(0xffffffffu, pm, o), pl2 = __shfl_xor_sync(0xffffffffu, pl, o);
    const st_t ps2 = __shfl_xor_sync(0xffffffffu, ps, o);
    const int64_t np2 = __shfl_xor_sync(0xffffffffu, np, o);
    lse_merge(m, l, m2, l2);
    if (OPT && p.second_pass) pl += pl2;  // acc2: a plain sum (supcon_options.cuh)
    else lse_merge(pm, pl, pm2, pl2);
    ps += ps2;
    np += np2;
  }
  if (my_h == 0 && my_r < rows_valid) {
    FwdPartial<E>& w = p.ws[(int64_t)blockIdx.y * p.M + r0 + my_r];
    w.m = m;
    w.l = l;
    w.pm = pm;
    w.pl = pl;
    w.ps = ps;
    w.npos = np;
  }
}

// Merges the splits and writes lse, pos_term, loss, npos (one thread per anchor). pos_dot and
// cls_npos, when given ('out': class_stats in supcon_cuda.cu): z_a . (sum of a's class - z_a) in fp64
// and the class size - 1 for each anchor, which replace the epilogue's sum of s over the positives
// and its count.
template <class E>
__global__ void supcon_fwd_finalize_kernel(const FwdPartial<E>* __restrict__ ws, int64_t splits, int64_t M,
                                           bool variant_in, const double* __restrict__ pos_dot,
                                           const int64_t* __restrict__ cls_npos, double inv_t,
                                           typename E::st_t* __restrict__ loss, typename E::st_t* __restrict__ lse,
                                           typename E::st_t* __restrict__ pos, int64_t* __restrict__ npos) {
  using st_t = typename E::st_t;
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= M) return;
  const st_t NEG_INF = dev_neg_inf(st_t());
  st_t m = NEG_INF, l = 0, pm = NEG_INF, pl = 0, ps = 0;
  int64_t np = 0;
  for (int64_t s = 0; s < splits; ++s) {
    const FwdPartial<E>& w = ws[s * M + i];
    lse_merge(m, l, w.m, w.l);
    lse_merge(pm, pl, w.pm, w.pl);
    ps += w.ps;
    np += w.npos;
  }
  if (cls_npos != nullptr) np = cls_npos[i];
  const st_t lse_i = m == NEG_INF ? NEG_INF : m + dev_log(l);
  st_t pos_i;
  if (variant_in) pos_i = pm == NEG_INF ? NEG_INF : pm + dev_log(pl);
  else if (np == 0) pos_i = st_t(0);
  else if (pos_dot != nullptr) pos_i = st_t(pos_dot[i] * inv_t / double(np));
  else pos_i = ps / st_t(np);
  lse[i] = lse_i;
  pos[i] = pos_i;
  npos[i] = np;
  loss[i] = np > 0 ? lse_i - pos_i + (variant_in ? dev_log(st_t(np)) : st_t(0)) : st_t(0);
}

// ---------------------------------------------------------------------------------------------
// Backward. Per-anchor inputs (index i = global row - offset): g (grad_loss, 0 where npos == 0),
// lse, aux = pos_term ('in') or 1/npos ('out', 0 where npos == 0). Rows are all N rows of z, each
// owned by one block (per column split). For row r, column c (global gr != gc), with s = s_rc = s_cr:
//   H_rc = [r is an anchor] g_r (exp(s - lse_r) - [same label] ('in': exp(s - pos_r) | 'out': 1/npos_r))
//        + [c is an anchor] g_c (exp(s - lse_c) - [same label] (... c's statistics ...))
// and grad[gr] = sum_c H_rc z_gc / T: the anchor side (first term) and the contrast side (second
// term) in one pass. A row block that holds an anchor walks all N columns; a row block without one
// walks only the anchor columns [offset, offset + M) (H is zero elsewhere). When anchors == contrast
// set this is the symmetric case: one tile serves rows and columns, 4 N^2 D FLOPs. The 'out'
// positive term -g/npos is folded into H (it is the class-sum formula's gradient) at no extra GEMM.
// Which rows and column tiles a block takes: supcon_plan.cuh (1-D grid, heavy blocks first).
// ---------------------------------------------------------------------------------------------
template <class E>
struct BwdParams {
  const typename E::raw_t* z;
  const label_t* labels;  // [R] dense class ids
  int64_t N, D, offset, M;
  plan::BwdPlan plan;                // gridDim.x == plan.blocks
  typename E::st_t inv_t;
  bool variant_in;
  bool vec;
  const typename E::st_t* g;
  const typename E::st_t* lse;
  const typename E::st_t* aux;
  const float* gmax;                 // TC only: max |g| for the fp16-range scale of H
  typename E::st_t* partial_heavy;   // [heavy_parts, heavy_count * BM, D] when heavy blocks are cut
  typename E::st_t* partial_light;   // [light_parts, light_count * BM, D] when light blocks are cut
  typename E::in_t* grad_out;        // [N, D] in z's dtype: the rows of uncut blocks
  // the loss options (OPT kernels only): g is gd, aux is gp, pv the fourth statistic (supcon_options.cuh)
  SetRule rule;
  const typename E::st_t* pv;
};

__device__ __forceinline__ void store_out(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store_out(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
__device__ __forceinline__ void store_out(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_out(double* p, double v) { *p = v; }

template <class E, bool OPT = false>
__global__ void __launch_bounds__(E::NT, E::kBwdMinBlocks) supcon_bwd_tile_kernel(const BwdParams<E> p) {
  using st_t = typename E::st_t;
  using raw_t = typename E::raw_t;
  using h_t = typename E::h_t;
  using L = SmemLayout<E, OPT>;
  constexpr int BM = E::BM, BN = E::BN, BK = E::BK, NT = E::NT;
  SUPCON_DYNAMIC_SHARED(unsigned char, smem);
  raw_t* Zr = reinterpret_cast<raw_t*>(smem + L::zr);
  raw_t* Zc = reinterpret_cast<raw_t*>(smem + L::zc);
  st_t* S = reinterpret_cast<st_t*>(smem + L::s);
  h_t* H = reinterpret_cast<h_t*>(smem + L::h);
  label_t* rs_lab = reinterpret_cast<label_t*>(smem + L::bwd_lab);  // [BM] labels of the block's rows
  label_t* cs_lab = rs_lab + BM;                                     // [BN] labels of the tile's columns
  st_t* rs_g = reinterpret_cast<st_t*>(smem + L::bwd_stats);         // [BM] each: per-row g, lse, aux
  st_t* rs_lse = rs_g + BM;
  st_t* rs_aux = rs_lse + BM;
  st_t* cs_g = rs_aux + BM;                                           // [BN] each: per-column g, lse, aux
  st_t* cs_lse = cs_g + BN;
  st_t* cs_aux = cs_lse + BN;
  label_t* rs_rank = cs_lab + BN;  // OPT: [BM] and [BN] ranks, [BM] and [BN] pv
  label_t* cs_rank = rs_rank + BM;
  st_t* rs_pv = cs_aux + BN;
  st_t* cs_pv = rs_pv + BM;

  const int tid = threadIdx.x;
  const plan::BwdItem item = plan::bwd_item(p.plan, blockIdx.x);
  const int64_t r0 = item.row_block * BM;  // rows [r0, r0 + rows_valid) of z
  const int rows_valid = (int)min((int64_t)BM, p.plan.grad_rows - r0);  // queue rows: no gradient
  const int64_t a_end = p.offset + p.M;    // anchors: rows [offset, a_end)
  // Columns: all of z when this row block holds an anchor, else only the anchor rows.
  const int64_t col_start = item.heavy ? 0 : p.offset;
  const int64_t ncols = item.heavy ? p.N : p.M;
  const int64_t ct_begin = item.tile_begin, ct_end = item.tile_end;
  const int nk = (int)((p.D + BK - 1) / BK);
  // Output: the grad rows themselves, or this part's slice of the partials.
  const bool cut = item.heavy ? p.plan.heavy_parts > 1 : p.plan.light_parts > 1;
  st_t* const partial = item.heavy ? p.partial_heavy : p.partial_light;
  const int64_t partial_rows = (item.heavy ? p.plan.heavy_count : p.plan.light_count) * BM;
  const int64_t partial_base = (item.part * partial_rows + item.partial_row0 * BM) * p.D;

  // H is stored scaled by hscale (a power of two) so that fp16 neither underflows (g ~ 1/N times
  // probabilities ~ 1/N) nor overflows: |H| <= 2 max|g| < 2^15 after scaling.
  st_t hscale = st_t(1), unscale = st_t(1);
  if constexpr (E::kScaleH) {
    const float gm = *p.gmax;
    if (gm > 0.f && isfinite(gm)) {
      int e = 0;
      frexpf(gm, &e);  // gm < 2^e
      const int sh = max(-126, min(126, 14 - e));
      hscale = ldexpf(1.f, sh);
      unscale = ldexpf(1.f, -sh);
    }
  }

  for (int r = tid; r < BM; r += NT) {
    const int64_t gr = r0 + r;
    const bool valid = r < rows_valid;
    rs_lab[r] = valid ? p.labels[gr] : 0;
    if (valid && gr >= p.offset && gr < a_end) {
      const int64_t i = gr - p.offset;
      rs_g[r] = p.g[i];
      rs_lse[r] = p.lse[i];
      rs_aux[r] = p.aux[i];
      if constexpr (OPT) rs_pv[r] = p.pv[i];
    } else {
      rs_g[r] = st_t(0);
      rs_lse[r] = st_t(0);
      rs_aux[r] = st_t(0);
      if constexpr (OPT) rs_pv[r] = st_t(0);
    }
    if constexpr (OPT) rs_rank[r] = valid ? p.rule.rank_of(gr) : 0;
  }

  int zr_chunk = -1;
  for (int oc = 0; oc < nk; ++oc) {  // output chunk: grad columns [oc*BK, oc*BK + BK)
    typename E::OAcc oacc;
    E::o_zero(oacc);
    for (int64_t ct = ct_begin; ct < ct_end; ++ct) {
      const int64_t c0 = ct * BN;  // local to the column range; global column = col_start + c0 + c
      const int cols_valid = (int)min((int64_t)BN, ncols - c0);
      __syncthreads();  // previous tile: epilogue done with S / column stats, o_mma done with H / Zc
      for (int c = tid; c < BN; c += NT) {
        const int64_t gc = col_start + c0 + c;
        const bool valid = c < cols_valid;
        cs_lab[c] = valid ? p.labels[gc] : 0;
        if (valid && gc >= p.offset && gc < a_end) {
          const int64_t i = gc - p.offset;
          cs_g[c] = p.g[i];
          cs_lse[c] = p.lse[i];
          cs_aux[c] = p.aux[i];
          if constexpr (OPT) cs_pv[c] = p.pv[i];
        } else {
          cs_g[c] = st_t(0);
          cs_lse[c] = st_t(0);
          cs_aux[c] = st_t(0);
          if constexpr (OPT) cs_pv[c] = st_t(0);
        }
        if constexpr (OPT) cs_rank[c] = valid ? p.rule.rank_of(gc) : 0;
      }
      typename E::SAcc acc;
      E::s_zero(acc);
      // k-chunks in the order oc+1, ..., oc: the last one left in Zc is the output chunk's.
      for (int kk = 0; kk < nk; ++kk) {
        const int kc = (oc + 1 + kk) % nk;
        if (kk > 0) __syncthreads();
        const int64_t k0 = (int64_t)kc * BK;
        const int kw = (int)min((int64_t)BK, p.D - k0);
        if (zr_chunk != kc) {
          load_tile<E, BM>(Zr, p.z, p.D, r0, rows_valid, k0, kw, p.vec);
          zr_chunk = kc;
        }
        load_tile<E, BN>(Zc, p.z, p.D, col_start + c0, cols_valid, k0, kw, p.vec);
        __syncthreads();
        E::s_mma(acc, Zr, Zc, E::kpad(kw));
      }
      E::s_store(acc, S, p.inv_t);
      __syncthreads();

      for (int e = tid; e < BM * BN; e += NT) {
        const int r = e / BN, c = e % BN;
        st_t h = st_t(0);
        if (r < rows_valid && c < cols_valid) {
          const int64_t gr = r0 + r, gc = col_start + c0 + c;
          if (OPT && gr != gc) {
            const st_t s = S[r * E::LDS + c];
            // row anchor r's set of column c, and column anchor c's set of row r (not symmetric)
            if (rs_g[r] != st_t(0) || rs_aux[r] != st_t(0)) {
              const int set = p.rule.classify(rs_lab[r], rs_rank[r], cs_lab[c], cs_rank[c]);
              h += opt_h_term(s, rs_g[r], rs_lse[r], rs_aux[r], rs_pv[r], set, p.rule, p.variant_in);
            }
            if (cs_g[c] != st_t(0) || cs_aux[c] != st_t(0)) {
              const int set = p.rule.classify(cs_lab[c], cs_rank[c], rs_lab[r], rs_rank[r]);
              h += opt_h_term(s, cs_g[c], cs_lse[c], cs_aux[c], cs_pv[c], set, p.rule, p.variant_in);
            }
          } else if (gr != gc) {
            const st_t s = S[r * E::LDS + c];
            const bool same = rs_lab[r] == cs_lab[c];
            const st_t gi = rs_g[r];
            if (gi != st_t(0)) {
              st_t t = dev_exp(s - rs_lse[r]);
              if (same) t -= p.variant_in ? dev_exp(s - rs_aux[r]) : rs_aux[r];
              h += gi * t;
            }
            const st_t gk = cs_g[c];
            if (gk != st_t(0)) {
              st_t t = dev_exp(s - cs_lse[c]);
              if (same) t -= p.variant_in ? dev_exp(s - cs_aux[c]) : cs_aux[c];
              h += gk * t;
            }
          }
        }
        H[r * E::LDH + c] = E::to_h(h * hscale);
      }
      __syncthreads();
      const int64_t k0 = (int64_t)oc * BK;
      E::o_mma(oacc, H, Zc, E::kpad((int)min((int64_t)BK, p.D - k0)));
    }

    // Flush the output chunk; S is free here (all epilogues passed the barrier before o_mma, and
    // the next s_store comes after the next tile's leading barrier), so it serves as scratch.
    const int64_t d0 = (int64_t)oc * BK;
    const st_t outscale = unscale * p.inv_t;
    auto sink = [&](int r, int c, st_t v) {
      const int64_t d = d0 + c;
      if (r < rows_valid && d < p.D) {
        // A cut row block: each (part, row, col) is written by exactly one block, and the host sums
        // the parts in a fixed order: deterministic, unlike atomicAdd into one accumulator.
        if (cut) partial[partial_base + r * p.D + d] = v * outscale;
        else store_out(p.grad_out + (r0 + r) * p.D + d, v * outscale);
      }
    };
    E::o_flush(oacc, S, E::kpad((int)min((int64_t)BK, p.D - d0)), sink);
  }
}

}  // namespace SUPCON_CUDA_NS
}  // namespace supcon_fast
