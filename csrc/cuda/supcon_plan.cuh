// Launch planning of the tiled kernels: how the work is cut into blocks. One source of truth: the
// host code plans with it, the backward kernel reads its block's work from it, and the schedule
// model (supcon_fast/schedule_model.py, through the cuda_plan op) lists it.
//
// Blocks run in launch order on the SMs, and a launch lasts until its last block is done, so the
// blocks should be many, of about equal work, and the smallest last (schedule_model.py measures it).
// Forward: anchor row blocks x column splits, every block the same number of column tiles; the
// split count fills the GPU (about two blocks per SM) and is raised until whole waves of blocks
// cover the work within 5% on one or two blocks per SM.
// Backward: rows are the first grad_rows of the N rows of z (all of them, unless the rows after are a
// queue's: contrast only, no gradient). A row block holding an anchor ("heavy") walks all N columns,
// one without ("light") walks only the M anchor columns: with M < N a heavy block has N / M times
// the work of a light one. Light blocks go first, uncut; heavy blocks follow, cut into parts of half
// a light block's columns, which fill the last wave finely. With few blocks for the GPU (small N),
// every block is cut further, towards two blocks per SM. A row block cut into parts writes fp32
// (fp64) partials that the host sums in a fixed order (deterministic, unlike atomics): about 2 N D
// values for the heavy rows; an uncut block writes its grad rows once, in z's dtype. The partials
// are capped at 256 MiB (bigger parts above that).
#pragma once

#include <cstdint>

#ifndef SUPCON_HD
#if defined(__CUDACC__)
#define SUPCON_HD __host__ __device__
#else
#define SUPCON_HD
#endif
#endif

namespace supcon_fast {
namespace plan {

SUPCON_HD constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct FwdPlan {
  int64_t row_blocks, splits, tiles_per_split;
};

// Waves of `blocks` equal blocks of `per` tiles on `slots`, over the ideal (the work spread evenly).
inline double wave_tail(int64_t blocks, int64_t per, int64_t work, int64_t slots) {
  return static_cast<double>(ceil_div(blocks, slots) * per) * static_cast<double>(slots) / static_cast<double>(work);
}

inline FwdPlan plan_fwd(int64_t M, int64_t N, int BM, int BN, int sms) {
  const int64_t row_blocks = ceil_div(M, BM) > 0 ? ceil_div(M, BM) : 1;
  const int64_t col_tiles = ceil_div(N, BN) > 0 ? ceil_div(N, BN) : 1;
  const int64_t max_splits = col_tiles < 65535 ? col_tiles : 65535;
  int64_t s0 = ceil_div(2 * static_cast<int64_t>(sms), row_blocks);  // about two blocks per SM
  s0 = s0 < 1 ? 1 : (s0 > max_splits ? max_splits : s0);
  FwdPlan best{row_blocks, 0, 0};
  double best_tail = 0;
  for (int64_t s = s0; s <= max_splits && s <= 16 * s0; ++s) {
    const int64_t per = ceil_div(col_tiles, s), splits = ceil_div(col_tiles, per);
    const int64_t blocks = row_blocks * splits, work = row_blocks * col_tiles;
    const double t1 = wave_tail(blocks, per, work, sms), t2 = wave_tail(blocks, per, work, 2 * sms);
    const double tail = t1 > t2 ? t1 : t2;
    if (best.splits == 0 || tail < best_tail - 1e-9) {
      best = {row_blocks, splits, per};
      best_tail = tail;
    }
    if (tail <= 1.05) break;
  }
  return best;
}

struct BwdPlan {
  int64_t N, M, offset;
  int64_t grad_rows;                  // rows [0, grad_rows) of z get a gradient; the rest are contrast only
  int64_t row_blocks;                 // ceil(grad_rows / BM)
  int64_t heavy_first, heavy_count;   // row blocks [heavy_first, heavy_first + heavy_count) hold anchors
  int64_t light_count;
  int64_t heavy_tiles, light_tiles;   // column tiles a heavy / light row block walks: ceil(N / BN), ceil(M / BN)
  int64_t heavy_parts, light_parts;   // parts per heavy / light row block
  int64_t heavy_per, light_per;       // column tiles per part
  int64_t blocks;                     // the grid: light blocks first, then heavy parts
  int64_t partial_bytes;              // fp32 / fp64 partials of the rows whose blocks are cut
};

// The work of backward block b: row block, whether it is heavy, its part and column tiles.
struct BwdItem {
  int64_t row_block, part, tile_begin, tile_end;
  bool heavy;
  int64_t partial_row0;  // first row of this block in its partial buffer (heavy or light rows)
};

SUPCON_HD inline BwdItem bwd_item(const BwdPlan& p, int64_t b) {
  BwdItem it;
  const int64_t light_blocks = p.light_count * p.light_parts;
  it.heavy = b >= light_blocks;
  if (!it.heavy) {
    const int64_t lb = b / p.light_parts;
    it.part = b % p.light_parts;
    it.row_block = lb < p.heavy_first ? lb : lb + p.heavy_count;
    it.tile_begin = it.part * p.light_per;
    it.tile_end = it.tile_begin + p.light_per < p.light_tiles ? it.tile_begin + p.light_per : p.light_tiles;
    it.partial_row0 = lb;
  } else {
    const int64_t hb = (b - light_blocks) / p.heavy_parts;
    it.part = (b - light_blocks) % p.heavy_parts;
    it.row_block = p.heavy_first + hb;
    it.tile_begin = it.part * p.heavy_per;
    it.tile_end = it.tile_begin + p.heavy_per < p.heavy_tiles ? it.tile_begin + p.heavy_per : p.heavy_tiles;
    it.partial_row0 = hb;
  }
  return it;  // partial_row0 is in row blocks; the kernel scales it by BM
}

inline int64_t bwd_partial_bytes(const BwdPlan& p, int BM, int64_t D, int elem_bytes) {
  int64_t rows = 0;
  if (p.heavy_parts > 1) rows += p.heavy_parts * p.heavy_count * BM;
  if (p.light_parts > 1) rows += p.light_parts * p.light_count * BM;
  return rows * D * elem_bytes;
}

inline void bwd_cut(BwdPlan& p, int64_t heavy_chunk, int64_t light_chunk) {
  p.heavy_parts = ceil_div(p.heavy_tiles, heavy_chunk);
  p.heavy_per = ceil_div(p.heavy_tiles, p.heavy_parts);
  p.heavy_parts = ceil_div(p.heavy_tiles, p.heavy_per);
  p.light_parts = ceil_div(p.light_tiles, light_chunk);
  p.light_per = ceil_div(p.light_tiles, p.light_parts);
  p.light_parts = ceil_div(p.light_tiles, p.light_per);
  p.blocks = p.heavy_count * p.heavy_parts + p.light_count * p.light_parts;
}

inline int64_t smaller(int64_t chunk, int64_t blocks, int64_t target) {
  const int64_t next = chunk * blocks / target;
  return next < chunk ? (next > 1 ? next : 1) : (chunk > 1 ? chunk - 1 : 1);
}

inline BwdPlan plan_bwd(int64_t N, int64_t M, int64_t offset, int64_t D, int BM, int BN, int sms, int elem_bytes,
                        int64_t grad_rows = -1, int64_t max_partial_bytes = int64_t(256) << 20) {
  BwdPlan p{};
  p.N = N;
  p.M = M;
  p.offset = offset;
  p.grad_rows = grad_rows < 0 ? N : grad_rows;
  p.row_blocks = ceil_div(p.grad_rows, BM);
  p.heavy_first = offset / BM;
  p.heavy_count = M > 0 ? (offset + M - 1) / BM - p.heavy_first + 1 : 0;
  p.light_count = p.row_blocks - p.heavy_count;
  p.heavy_tiles = ceil_div(N, BN);
  p.light_tiles = ceil_div(M, BN);
  // Light blocks uncut; heavy blocks in parts of half a light block's columns (all of them when
  // every row block holds an anchor).
  int64_t heavy_chunk = p.light_count > 0 ? ceil_div(p.light_tiles, 2) : p.heavy_tiles;
  int64_t light_chunk = p.light_tiles;
  bwd_cut(p, heavy_chunk, light_chunk);
  // Too few blocks for the GPU: cut further, towards two per SM.
  const int64_t target = 2 * static_cast<int64_t>(sms);
  while (p.blocks < target && (heavy_chunk > 1 || light_chunk > 1)) {
    heavy_chunk = smaller(heavy_chunk, p.blocks, target);
    light_chunk = smaller(light_chunk, p.blocks, target);
    bwd_cut(p, heavy_chunk, light_chunk);
  }
  // Partials over the cap: bigger parts, heavy first (uncut blocks write no partials).
  while (bwd_partial_bytes(p, BM, D, elem_bytes) > max_partial_bytes &&
         (heavy_chunk < p.heavy_tiles || light_chunk < p.light_tiles)) {
    if (heavy_chunk < p.heavy_tiles) heavy_chunk = heavy_chunk * 2 < p.heavy_tiles ? heavy_chunk * 2 : p.heavy_tiles;
    else light_chunk = light_chunk * 2 < p.light_tiles ? light_chunk * 2 : p.light_tiles;
    bwd_cut(p, heavy_chunk, light_chunk);
  }
  p.partial_bytes = bwd_partial_bytes(p, BM, D, elem_bytes);
  return p;
}

}  // namespace plan
}  // namespace supcon_fast
