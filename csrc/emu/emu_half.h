// __half and __nv_bfloat16 for the CUDA emulation: 16-bit storage types with the device's
// conversions (float -> 16 bit rounds to nearest even, overflow to inf, NaN stays NaN; 16 bit ->
// float is exact). Only what the kernels use: conversions and raw bits; no arithmetic operators,
// so an accidental half-precision sum fails to compile instead of silently running in fp32.
#pragma once

#include <cstdint>
#include <cstring>

namespace supcon_emu {

// The bits of one type read as another of the same size (std::bit_cast, which C++17 lacks).
template <class To, class From>
inline To bit_cast(From from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast: same size");
  To to;
  std::memcpy(&to, &from, sizeof(To));
  return to;
}
inline uint32_t float_bits(float f) { return bit_cast<uint32_t>(f); }
inline float bits_float(uint32_t u) { return bit_cast<float>(u); }

// IEEE binary16, round to nearest even (subnormals included), as cvt.rn.f16.f32.
inline uint16_t float_to_half_bits(float f) {
  const uint32_t x = float_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));  // NaN
  if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520: rounds to inf
  if (ax < 0x38800000u) {  // below the smallest normal half (2^-14): subnormal or zero
    // value = ax as float; half subnormal unit is 2^-24. Scale and round to nearest even.
    const float v = bits_float(ax) * 16777216.0f;  // exact: multiply by 2^24
    // v < 1024; round half to even through the float itself (v is exact, result integral).
    float r = v + 8388608.0f;  // 2^23: float addition rounds to an integer, nearest even
    r -= 8388608.0f;
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(r));  // r == 1024 gives the smallest normal
  }
  // Normal: rebias exponent (127 -> 15), keep 10 mantissa bits, round to nearest even.
  uint32_t m = ax + 0xc8000000u;  // exponent - 112 (<< 23)
  m += 0x0fffu + ((m >> 13) & 1u);
  return static_cast<uint16_t>(sign | (m >> 13));
}

inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) {  // zero or subnormal: m * 2^-24, exact in float
    const float v = static_cast<float>(m) * 5.9604644775390625e-08f;
    return bits_float(float_bits(v) | sign);
  }
  if (e == 31) return bits_float(sign | 0x7f800000u | (m << 13));  // inf / NaN
  return bits_float(sign | ((e + 112u) << 23) | (m << 13));
}

// bfloat16: the top 16 bits of a float, round to nearest even; NaN stays a quiet NaN.
inline uint16_t float_to_bf16_bits(float f) {
  const uint32_t x = float_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x0040u);
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}
inline float bf16_bits_to_float(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }

}  // namespace supcon_emu

struct __half {
  uint16_t bits;
  __half() = default;
  explicit __half(float f) : bits(supcon_emu::float_to_half_bits(f)) {}
  explicit operator float() const { return supcon_emu::half_bits_to_float(bits); }
};
struct __nv_bfloat16 {
  uint16_t bits;
  __nv_bfloat16() = default;
  explicit __nv_bfloat16(float f) : bits(supcon_emu::float_to_bf16_bits(f)) {}
  explicit operator float() const { return supcon_emu::bf16_bits_to_float(bits); }
};
static_assert(sizeof(__half) == 2 && sizeof(__nv_bfloat16) == 2, "16-bit storage types");

inline __half __float2half_rn(float f) { return __half(f); }
inline float __half2float(__half h) { return static_cast<float>(h); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return static_cast<float>(b); }
