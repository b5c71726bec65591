// The warp-level matrix instructions of csrc/cuda/mma_ptx.cuh for the emulation, moving data between
// lanes exactly as the PTX ISA documents their fragment layouts (so that a kernel built on them is
// emulated with the hardware's data movement, not a whole-tile stand-in):
//   mma.sync.m16n8k16.row.col (bf16 / f16 in, fp32 accumulate), lane l = 4 g + t:
//     A 16 x 16, 4 x b32: a[j] holds elements i = 2j, 2j + 1 at row g + 8 ((i >> 1) & 1), col 2t + (i & 1) + 8 (i >> 2)
//     B 16 x 8,  2 x b32: b[j] holds elements i = 2j, 2j + 1 at row 2t + (i & 1) + 8 (i >> 1), col g
//     C, D 16 x 8 fp32: c[i] at row g + 8 (i >> 1), col 2t + (i & 1)
//   ldmatrix.m8n8.x4.b16: lanes 8j .. 8j + 7 give the row addresses of matrix j (16-byte aligned, in
//     shared memory); lane l gets, for each j, elements (l / 4, 2 (l % 4)) and the next of matrix j
//     (.trans: of its transpose);
//   cp.async (16 bytes, zero-fill when the source size is 0): the copy lands when its group is waited
//     for (cp.async.wait_group), so a read before the wait sees the old contents.
#pragma once

#include <cstdint>
#include <cstring>

#include "emu_half.h"
#include "emu_runtime.h"

namespace supcon_emu {
namespace mma {

struct MmaIn {
  uint32_t a[4], b[2];
  float c[4];
};

template <typename T>
inline float half_of(uint32_t reg, int hi) {
  const uint16_t bits = static_cast<uint16_t>(hi ? reg >> 16 : reg & 0xffffu);
  T v;
  std::memcpy(&v, &bits, 2);
  return static_cast<float>(v);
}

template <typename T>
void mma_16816_compute(const unsigned char* ins, unsigned char* outs, unsigned /*mask*/, void* /*ctx*/) {
  float A[16][16], B[16][8], C[16][8];
  for (int l = 0; l < 32; ++l) {
    MmaIn in;
    std::memcpy(&in, ins + l * sizeof(MmaIn), sizeof(MmaIn));
    const int g = l >> 2, t = l & 3;
    for (int i = 0; i < 8; ++i) A[g + 8 * ((i >> 1) & 1)][2 * t + (i & 1) + 8 * (i >> 2)] = half_of<T>(in.a[i >> 1], i & 1);
    for (int i = 0; i < 4; ++i) B[2 * t + (i & 1) + 8 * (i >> 1)][g] = half_of<T>(in.b[i >> 1], i & 1);
    for (int i = 0; i < 4; ++i) C[g + 8 * (i >> 1)][2 * t + (i & 1)] = in.c[i];
  }
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, t = l & 3;
    float d[4];
    for (int i = 0; i < 4; ++i) {
      const int r = g + 8 * (i >> 1), n = 2 * t + (i & 1);
      float acc = C[r][n];
      for (int k = 0; k < 16; ++k) acc += A[r][k] * B[k][n];  // exact products, fp32 sums
      d[i] = acc;
    }
    std::memcpy(outs + l * sizeof(d), d, sizeof(d));
  }
}

template <bool Trans>
void ldmatrix_x4_compute(const unsigned char* ins, unsigned char* outs, unsigned /*mask*/, void* /*ctx*/) {
  const unsigned char* rows[32];
  for (int l = 0; l < 32; ++l) std::memcpy(&rows[l], ins + l * sizeof(void*), sizeof(void*));
  for (int l = 0; l < 32; ++l) {
    uint32_t r[4];
    for (int j = 0; j < 4; ++j) {
      uint16_t lo, hi;
      if (!Trans) {  // row l / 4, elements 2 (l % 4) and the next
        std::memcpy(&lo, rows[8 * j + (l >> 2)] + 4 * (l & 3), 2);
        std::memcpy(&hi, rows[8 * j + (l >> 2)] + 4 * (l & 3) + 2, 2);
      } else {  // the transpose's (l / 4, 2 (l % 4)) is the matrix's (2 (l % 4), l / 4)
        std::memcpy(&lo, rows[8 * j + 2 * (l & 3)] + 2 * (l >> 2), 2);
        std::memcpy(&hi, rows[8 * j + 2 * (l & 3) + 1] + 2 * (l >> 2), 2);
      }
      r[j] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
    }
    std::memcpy(outs + l * sizeof(r), r, sizeof(r));
  }
}

template <typename T>
inline void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4],
                      const char* file, int line) {
  MmaIn in;
  std::memcpy(in.a, a, sizeof(in.a));
  std::memcpy(in.b, b, sizeof(in.b));
  std::memcpy(in.c, c, sizeof(in.c));
  float out[4];
  warp_op(0xffffffffu, "mma.sync.m16n8k16", &in, sizeof(in), out, sizeof(out), mma_16816_compute<T>, nullptr, file,
          line);
  std::memcpy(d, out, sizeof(out));
}

template <bool Trans>
inline void ldmatrix_x4(uint32_t (&r)[4], const void* row, const char* file, int line) {
  if (reinterpret_cast<std::uintptr_t>(row) % 16 != 0) fail("ldmatrix: row address not 16-byte aligned", file, line);
  if (!is_shared(row, 16)) fail("ldmatrix: row address not in shared memory", file, line);
  warp_op(0xffffffffu, Trans ? "ldmatrix.x4.trans" : "ldmatrix.x4", &row, sizeof(row), r, sizeof(r),
          ldmatrix_x4_compute<Trans>, nullptr, file, line);
}

}  // namespace mma
}  // namespace supcon_emu
