// The CUDA emulation under AddressSanitizer and UBSan (built by CMakeLists.txt with
// -DSUPCON_EMU_TESTS=ON, run by ctest; tests/test_emu_sanitizers.py drives it from pytest):
//   1. the emulation's own checks, on small kernels written to break one rule each: a missing
//      barrier, a divergent barrier, an out-of-bounds shared or global access, misaligned WMMA,
//      launch bounds, grid limits, shared memory over the opt-in limit, poison-dependent results;
//   2. the real csrc/cuda kernels (through the same host code as the device build) on a set of
//      shapes, dtypes and variants, against the CPU op, bitwise identical across thread schedules
//      and poison patterns, with every memory access checked by the sanitizers.
// Exit status 0 when every check passes; each failure is printed.
#include <ATen/ATen.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#define SUPCON_EMULATION 1
#include "../../csrc/cuda/cuda_compat.cuh"
#include "../../csrc/cuda/mma_ptx.cuh"
#include "../../csrc/emu/emu_host.h"
#include "../../csrc/supcon.h"

namespace {

int g_failures = 0;
#define EXPECT(cond, ...)                                              \
  do {                                                                \
    if (!(cond)) {                                                    \
      ++g_failures;                                                   \
      std::fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                              \
      std::fprintf(stderr, "\n");                                     \
    }                                                                 \
  } while (0)

struct Session {
  explicit Session(supcon_emu::Schedule s = supcon_emu::Schedule::ascending, int poison = 1, uint64_t seed = 0,
                   const char* arch = "sm_90", int sm_count = 0) {
    supcon_emu::Config c;
    c.schedule = s;
    c.poison = poison;
    c.seed = seed;
    c.arch = arch;
    c.sm_count = sm_count;
    supcon_emu::start(c);
  }
  ~Session() { supcon_emu::stop(); }
};

// Runs fn, returns the message of the exception it throws ("" if none).
std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

// Runs fn in a child process; returns its exit status and what it wrote to stderr. A sanitizer
// report ends the process, so this is how a test sees one.
std::pair<int, std::string> in_child(const std::function<void()>& fn) {
  int fds[2];
  if (pipe(fds) != 0) return {-1, "pipe failed"};
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], 2);
    close(fds[0]);
    try {
      fn();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "exception: %s\n", e.what());
      std::fflush(stderr);
      _exit(3);
    }
    _exit(0);
  }
  close(fds[1]);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof(buf))) > 0) out.append(buf, static_cast<std::size_t>(n));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), out};
}

// ---------------------------------------------------------------------------------------------
// Kernels that each break (or, with `fixed`, keep) one rule.
// ---------------------------------------------------------------------------------------------
__global__ void neighbour_kernel(float* out, bool with_barrier) {
  SUPCON_SHARED(float, buf, 256);
  const int t = threadIdx.x;
  buf[t] = static_cast<float>(t);
  if (with_barrier) __syncthreads();
  out[t] = buf[(t + 1) % 256];  // without the barrier: a race on buf
}

__global__ void divergent_barrier_kernel(float* out) {
  if (threadIdx.x < 100) __syncthreads();
  out[threadIdx.x] = 1.f;
}

__global__ void shared_oob_kernel(int over) {
  SUPCON_SHARED(int, buf, 64);
  buf[threadIdx.x + over] = 1;  // thread 63 + over writes past the end
}

__global__ void dynamic_oob_kernel(int n) {
  SUPCON_DYNAMIC_SHARED(float, dyn);
  dyn[n] = 1.f;  // n == the element count: one past the end
}

__global__ void global_oob_kernel(const float* in, float* out, int n) {
  out[threadIdx.x] = in[threadIdx.x + n];  // reads past the end of in
}

__global__ void uninitialized_kernel(float* out) {
  SUPCON_DYNAMIC_SHARED(float, dyn);
  if (threadIdx.x < 16) dyn[threadIdx.x] = 1.f;
  __syncthreads();
  out[threadIdx.x] = dyn[threadIdx.x % 32];  // lanes 16..31 read what nobody wrote
}

__global__ void wmma_kernel(float* out, int offset, unsigned ldm) {
  SUPCON_DYNAMIC_SHARED(__half, tile);
  for (int i = threadIdx.x; i < 16 * 32; i += 32) tile[i] = __float2half_rn(static_cast<float>(i % 7) - 3.f);
  __syncwarp();
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, __half, nvcuda::wmma::row_major> a;
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, __half, nvcuda::wmma::col_major> b;
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> c;
  nvcuda::wmma::fill_fragment(c, 0.f);
  nvcuda::wmma::load_matrix_sync(a, tile + offset, ldm);
  nvcuda::wmma::load_matrix_sync(b, tile, 16);
  nvcuda::wmma::mma_sync(c, a, b, c);
  nvcuda::wmma::store_matrix_sync(out, c, 16, nvcuda::wmma::mem_row_major);
}

__global__ void shuffle_kernel(int* out) {
  int v = static_cast<int>(threadIdx.x);
  for (int o = 1; o < 32; o <<= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  out[threadIdx.x] = v;  // every lane: the sum of its warp's lane ids
}

__global__ void empty_kernel() {}

// mma.sync / ldmatrix / cp.async (csrc/cuda/mma_ptx.cuh) on one warp: A [16 x 16] and B [16 x 8] from
// global memory, either packed into fragments by hand from the documented layouts, or staged in
// shared memory with cp.async and loaded with ldmatrix (A as x4; B, stored [k][n], as x4.trans).
namespace ptx = supcon_fast::cuda_emu::ptx;

template <typename T>
uint32_t pack(T lo, T hi) {
  uint16_t l, h;
  std::memcpy(&l, &lo, 2);
  std::memcpy(&h, &hi, 2);
  return static_cast<uint32_t>(l) | (static_cast<uint32_t>(h) << 16);
}

template <typename T>
__global__ void mma_kernel(const T* A, const T* B, float* D, float* D_ldm, int* seen_before_wait) {
  const int l = threadIdx.x, g = l >> 2, t = l & 3;
  uint32_t a[4], b[2];
  for (int j = 0; j < 4; ++j) {  // a[j]: elements 2j, 2j + 1
    const int r = g + 8 * (j & 1), c = 2 * t + 8 * (j >> 1);
    a[j] = pack(A[r * 16 + c], A[r * 16 + c + 1]);
  }
  for (int j = 0; j < 2; ++j) {  // b[j]: elements 2j, 2j + 1 at rows 2t + 8j, 2t + 8j + 1
    const int k = 2 * t + 8 * j;
    b[j] = pack(B[k * 8 + g], B[(k + 1) * 8 + g]);
  }
  const float zero[4] = {0.f, 0.f, 0.f, 0.f};
  float d[4];
  ptx::mma_16816<T>(d, a, b, zero);
  for (int i = 0; i < 4; ++i) D[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)] = d[i];

  SUPCON_DYNAMIC_SHARED(unsigned char, smem);  // A [16 x 16] then B [16 x 8], 16-bit
  T* sA = reinterpret_cast<T*>(smem);
  T* sB = sA + 256;
  for (int chunk = l; chunk < 48; chunk += 32) {  // 768 bytes in 16-byte pieces
    if (chunk < 32) ptx::cp_async_16(sA + chunk * 8, A + chunk * 8, true);
    else ptx::cp_async_16(sB + (chunk - 32) * 8, B + (chunk - 32) * 8, true);
  }
  ptx::cp_async_commit();
  uint16_t first;
  std::memcpy(&first, sA + l * 8, 2);  // before the wait: still the poison
  seen_before_wait[l] = first;
  ptx::cp_async_wait<0>();
  __syncwarp();
  uint32_t fa[4], fb4[4];
  ptx::ldmatrix_x4(fa, sA + (l % 16) * 16 + (l / 16) * 8);
  ptx::ldmatrix_x4_trans(fb4, sB + (l % 16) * 8);  // rows k = 0..15; matrices 2 and 3 repeat 0 and 1
  const uint32_t fb[2] = {fb4[0], fb4[1]};
  for (int j = 0; j < 4; ++j)
    if (fa[j] != a[j]) D_ldm[256 + l] = 1.f;  // ldmatrix must give the hand-packed fragment
  for (int j = 0; j < 2; ++j)
    if (fb[j] != b[j]) D_ldm[256 + l] = 2.f;
  ptx::mma_16816<T>(d, fa, fb, zero);
  for (int i = 0; i < 4; ++i) D_ldm[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)] = d[i];
}

__global__ void ldmatrix_misaligned_kernel(int offset) {
  SUPCON_DYNAMIC_SHARED(__nv_bfloat16, tile);
  uint32_t r[4];
  ptx::ldmatrix_x4(r, tile + (threadIdx.x % 16) * 16 + offset);
}

__global__ void cp_async_unwaited_kernel(const float* src) {
  SUPCON_DYNAMIC_SHARED(float, dst);
  ptx::cp_async_16(dst + threadIdx.x * 4, src + threadIdx.x * 4, true);
  ptx::cp_async_commit();
}


// ---------------------------------------------------------------------------------------------
// 1. The emulation's checks
// ---------------------------------------------------------------------------------------------
void test_conversions() {
  // float -> half / bf16 against c10's round-to-nearest-even conversions: every 16-bit value,
  // the midpoints between neighbours (ties), one float ulp either side, and a stride of all floats.
  long bad = 0;
  auto check = [&](float f) {
    const uint16_t h = supcon_emu::float_to_half_bits(f), h_ref = c10::Half(f).x;
    const uint16_t b = supcon_emu::float_to_bf16_bits(f), b_ref = c10::BFloat16(f).x;
    const bool nan = std::isnan(f);
    if ((nan ? (h & 0x7c00u) != 0x7c00u || (h & 0x3ffu) == 0 : h != h_ref) ||
        (nan ? (b & 0x7f80u) != 0x7f80u || (b & 0x7fu) == 0 : b != b_ref))
      if (++bad < 5) std::fprintf(stderr, "conversion of %a: half %04x (c10 %04x), bf16 %04x (c10 %04x)\n", f, h, h_ref, b, b_ref);
  };
  for (uint32_t v = 0; v < 65536; ++v) {
    const float f = supcon_emu::half_bits_to_float(static_cast<uint16_t>(v));
    EXPECT(std::isnan(f) || static_cast<float>(c10::Half(static_cast<uint16_t>(v), c10::Half::from_bits())) == f,
          "half %04x decodes to %a", v, f);
    const float g = supcon_emu::half_bits_to_float(static_cast<uint16_t>(v + 1));
    for (float x : {f, g, 0.5f * (f + g), std::nextafter(f, INFINITY), std::nextafter(f, -INFINITY),
                    supcon_emu::bf16_bits_to_float(static_cast<uint16_t>(v)),
                    std::nextafter(supcon_emu::bf16_bits_to_float(static_cast<uint16_t>(v)), 0.f)})
      check(x);
  }
  for (uint64_t u = 0; u < (1ull << 32); u += 4099) check(supcon_emu::bits_float(static_cast<uint32_t>(u)));
  EXPECT(bad == 0, "%ld conversions differ from c10", bad);
}

void test_missing_barrier_changes_results() {
  std::vector<std::vector<float>> runs;
  for (bool barrier : {true, false})
    for (auto s : {supcon_emu::Schedule::ascending, supcon_emu::Schedule::descending, supcon_emu::Schedule::shuffled}) {
      Session session(s, 1, 5);
      std::vector<float> out(256);
      supcon_emu::launch_kernel(neighbour_kernel, "neighbour_kernel", dim3(1), dim3(256), 0, 0, out.data(), barrier);
      runs.push_back(out);
    }
  EXPECT(runs[0] == runs[1] && runs[1] == runs[2], "with the barrier, every schedule gives the same result");
  for (int t = 0; t < 256; ++t) EXPECT(runs[0][t] == static_cast<float>((t + 1) % 256), "neighbour %d", t);
  EXPECT(runs[3] != runs[4] || runs[4] != runs[5], "without the barrier the schedules must disagree");
}

void test_divergent_barrier_is_an_error() {
  Session session;
  std::vector<float> out(256);
  const std::string e = error_of([&] {
    supcon_emu::launch_kernel(divergent_barrier_kernel, "divergent_barrier_kernel", dim3(2), dim3(256), 0, 0, out.data());
  });
  EXPECT(contains(e, "barrier not reached by every thread") && contains(e, "divergent_barrier_kernel") &&
            contains(e, "thread (") && contains(e, "test_emu.cpp"),
        "message: %s", e.c_str());
}

void test_out_of_bounds_are_caught() {
  const auto [rc, out] = in_child([] {
    Session session;
    supcon_emu::launch_kernel(shared_oob_kernel, "shared_oob_kernel", dim3(1), dim3(64), 0, 0, 1);
  });
  EXPECT(rc != 0 && contains(out, "shared_oob_kernel") && contains(out, "thread (63"),
        "static shared overflow not reported with kernel and thread (rc %d): %s", rc, out.c_str());
  const auto [rc2, out2] = in_child([] {
    Session session;
    supcon_emu::launch_kernel(dynamic_oob_kernel, "dynamic_oob_kernel", dim3(1), dim3(32), 100 * 4, 0, 100);
  });
  EXPECT(rc2 != 0 && contains(out2, "dynamic_oob_kernel"), "dynamic shared overflow not reported (rc %d): %s", rc2,
        out2.c_str());
  const auto [rc3, out3] = in_child([] {
    Session session;
    std::vector<float> in(64), out(64);
    supcon_emu::launch_kernel(global_oob_kernel, "global_oob_kernel", dim3(1), dim3(64), 0, 0,
                              static_cast<const float*>(in.data()), out.data(), 1);
  });
  EXPECT(rc3 != 0 && contains(out3, "global_oob_kernel") && contains(out3, "thread (63"),
        "global overflow not reported (rc %d): %s", rc3, out3.c_str());
}

void test_poison_shows_uninitialized_reads() {
  std::vector<float> a(64), b(64);
  {
    Session s(supcon_emu::Schedule::ascending, 1);
    supcon_emu::launch_kernel(uninitialized_kernel, "uninitialized_kernel", dim3(1), dim3(64), 32 * 4, 0, a.data());
  }
  {
    Session s(supcon_emu::Schedule::ascending, 2);
    supcon_emu::launch_kernel(uninitialized_kernel, "uninitialized_kernel", dim3(1), dim3(64), 32 * 4, 0, b.data());
  }
  EXPECT(std::isnan(a[20]) && !std::isnan(b[20]) && a[0] == 1.f && b[0] == 1.f, "poison 1 / 2: %g / %g", a[20], b[20]);
}

void test_wmma() {
  Session session;
  std::vector<float> out(256);
  supcon_emu::launch_kernel(wmma_kernel, "wmma_kernel", dim3(1), dim3(32), 16 * 32 * 2, 0, out.data(), 0, 16u);
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      float want = 0.f;  // a[i][k] = tile[i*16 + k], b[k][j] = tile[k + j*16] (col-major)
      for (int k = 0; k < 16; ++k) want += static_cast<float>((i * 16 + k) % 7 - 3) * static_cast<float>((k + j * 16) % 7 - 3);
      EXPECT(out[i * 16 + j] == want, "wmma (%d, %d): %g != %g", i, j, out[i * 16 + j], want);
    }
  std::string e = error_of([&] {
    supcon_emu::launch_kernel(wmma_kernel, "wmma_kernel", dim3(1), dim3(32), 16 * 32 * 2, 0, out.data(), 8, 16u);
  });
  EXPECT(contains(e, "256-bit") && contains(e, "wmma_kernel"), "misaligned fragment pointer: %s", e.c_str());
  e = error_of([&] {
    supcon_emu::launch_kernel(wmma_kernel, "wmma_kernel", dim3(1), dim3(32), 16 * 32 * 2, 0, out.data(), 0, 20u);
  });
  EXPECT(contains(e, "ldm = 20"), "illegal ldm: %s", e.c_str());
}

void test_shuffle() {
  Session session(supcon_emu::Schedule::shuffled, 1, 3);
  std::vector<int> out(96);
  supcon_emu::launch_kernel(shuffle_kernel, "shuffle_kernel", dim3(1), dim3(96), 0, 0, out.data());
  for (int t = 0; t < 96; ++t) EXPECT(out[t] == 32 * (t / 32 * 32) + 496, "lane sum %d: %d", t, out[t]);
}

void test_launch_checks() {
  Session session(supcon_emu::Schedule::ascending, 1, 0, "sm_80");
  auto launch = [](dim3 g, dim3 b, int smem, int bounds) {
    return error_of([&] { supcon_emu::launch_kernel(empty_kernel, "empty_kernel", g, b, smem, bounds); });
  };
  EXPECT(contains(launch(dim3(1), dim3(128), 0, 256), "__launch_bounds__(256)"), "launch bounds");
  EXPECT(contains(launch(dim3(1, 65536), dim3(32), 0, 0), "over the limits"), "grid y limit");
  EXPECT(contains(launch(dim3(1), dim3(2048), 0, 0), "1024 threads"), "block size limit");
  EXPECT(contains(launch(dim3(1), dim3(32), 64 * 1024, 0), "cudaFuncAttributeMaxDynamicSharedMemorySize"),
        "dynamic shared memory above 48 KB without the opt-in");
  EXPECT(contains(error_of([] { supcon_emu::set_max_dynamic_smem(reinterpret_cast<const void*>(empty_kernel), 200000); }),
                 "opt-in limit of sm_80"),
        "opt-in over the arch's limit");
  EXPECT(launch(dim3(3, 2), dim3(64), 0, 64).empty(), "a legal launch");
}


template <typename T>
void test_mma_type() {
  std::vector<T> A(256), B(128);
  for (int i = 0; i < 256; ++i) A[i] = T(static_cast<float>((i * 7) % 13) - 6.f);
  for (int i = 0; i < 128; ++i) B[i] = T(static_cast<float>((i * 5) % 11) - 5.f);
  std::vector<float> D(128), D_ldm(256 + 32, 0.f);
  std::vector<int> seen(32);
  {
    Session session(supcon_emu::Schedule::shuffled, 1, 9);
    supcon_emu::launch_kernel(mma_kernel<T>, "mma_kernel", dim3(1), dim3(32), 768, 0, static_cast<const T*>(A.data()),
                              static_cast<const T*>(B.data()), D.data(), D_ldm.data(), seen.data());
  }
  for (int r = 0; r < 16; ++r)
    for (int n = 0; n < 8; ++n) {
      float want = 0.f;
      for (int k = 0; k < 16; ++k) want += static_cast<float>(A[r * 16 + k]) * static_cast<float>(B[k * 8 + n]);
      EXPECT(D[r * 8 + n] == want, "mma (%d, %d): %g != %g", r, n, D[r * 8 + n], want);
      EXPECT(D_ldm[r * 8 + n] == want, "ldmatrix + mma (%d, %d): %g != %g", r, n, D_ldm[r * 8 + n], want);
    }
  for (int l = 0; l < 32; ++l) {
    EXPECT(D_ldm[256 + l] == 0.f, "lane %d: ldmatrix fragment differs from the documented layout (%g)", l, D_ldm[256 + l]);
    EXPECT(seen[l] == 0xffff, "lane %d: a cp.async destination read before the wait must hold the poison", l);
  }
}

void test_mma_ldmatrix_cp_async() {
  test_mma_type<__nv_bfloat16>();
  test_mma_type<__half>();
  Session session;
  std::string e = error_of([] {
    supcon_emu::launch_kernel(ldmatrix_misaligned_kernel, "ldmatrix_misaligned_kernel", dim3(1), dim3(32), 1024, 0, 4);
  });
  EXPECT(contains(e, "16-byte aligned") && contains(e, "ldmatrix_misaligned_kernel"), "ldmatrix alignment: %s", e.c_str());
  std::vector<float> src(128);
  e = error_of([&] {
    supcon_emu::launch_kernel(cp_async_unwaited_kernel, "cp_async_unwaited_kernel", dim3(1), dim3(32), 512, 0,
                              static_cast<const float*>(src.data()));
  });
  EXPECT(contains(e, "never waited"), "cp.async without a wait: %s", e.c_str());
}

// ---------------------------------------------------------------------------------------------
// 2. The SupCon kernels against the CPU op
// ---------------------------------------------------------------------------------------------
struct Case {
  int64_t n, d, offset, m;
  at::ScalarType dtype;
  bool variant_in;
  bool misaligned;
  const char* arch = "sm_90";  // sm_86: the compact backward (99 KB parts)
  int sm_count = 0;            // 1: the plan of a large problem (many tiles per block, uncut blocks)
};

bool bitwise_equal(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type() &&
         std::memcmp(a.contiguous().data_ptr(), b.contiguous().data_ptr(), a.numel() * a.element_size()) == 0;
}

void test_supcon_case(const Case& c) {
  at::manual_seed(c.n * 131 + c.d);
  at::Tensor z = at::randn({c.n, c.d}, at::kDouble);
  z = (z / z.norm(2, 1, true)).to(c.dtype);
  if (c.misaligned) z = at::cat({at::zeros({1}, z.options()), z.flatten()}).narrow(0, 1, c.n * c.d).view({c.n, c.d});
  const at::Tensor labels = at::randint(0, std::max<int64_t>(1, c.n / 4), {c.n}, at::kLong);
  const double t = 0.1;
  const auto stat = c.dtype == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor g = at::rand({c.m}, stat);

  const supcon_fast::ContrastOptions opt;  // the default sets: no queue, denominator 'all', no cap
  std::vector<std::vector<at::Tensor>> runs;
  const std::pair<supcon_emu::Schedule, int> configs[] = {
      {supcon_emu::Schedule::ascending, 1}, {supcon_emu::Schedule::descending, 2}, {supcon_emu::Schedule::shuffled, 1}};
  for (const auto& [schedule, poison] : configs) {
    Session session(schedule, poison, 11, c.arch, c.sm_count);
    const auto [loss, lse, pos, npos, coef] =
        supcon_fast::cuda_emu::supcon_fwd_cuda(z, labels, c.offset, c.m, t, c.variant_in, opt);
    const at::Tensor grad =
        supcon_fast::cuda_emu::supcon_bwd_cuda(g, z, labels, lse, pos, npos, c.offset, c.m, t, c.variant_in, opt, coef);
    runs.push_back({loss, lse, pos, npos, grad});
  }
  char what[160];
  std::snprintf(what, sizeof(what), "N=%ld D=%ld offset=%ld M=%ld %s %s%s %s sms=%d", (long)c.n, (long)c.d,
                (long)c.offset, (long)c.m, c10::toString(c.dtype), c.variant_in ? "in" : "out",
                c.misaligned ? " misaligned" : "", c.arch, c.sm_count);
  for (std::size_t r = 1; r < runs.size(); ++r)
    for (std::size_t k = 0; k < runs[0].size(); ++k)
      EXPECT(bitwise_equal(runs[0][k], runs[r][k]), "%s: output %zu differs between schedules / poison", what, k);

  // Against the CPU op on the same (rounded) input: fp64 / fp32 to their precision; fp16 / bf16
  // differ by the H tile's 16-bit rounding in the backward and fp32 sums.
  const auto [loss_c, lse_c, pos_c, npos_c, coef_c] =
      supcon_fast::supcon_fwd_cpu(z, labels, c.offset, c.m, t, c.variant_in, opt);
  const at::Tensor grad_c =
      supcon_fast::supcon_bwd_cpu(g, z, labels, lse_c, pos_c, npos_c, c.offset, c.m, t, c.variant_in, opt, coef_c);
  const double tol = c.dtype == at::kDouble ? 1e-10 : c.dtype == at::kFloat ? 1e-5 : 2e-2;
  const auto& e = runs[0];
  EXPECT(at::equal(e[3], npos_c), "%s: npos", what);
  EXPECT(at::allclose(e[0].to(at::kDouble), loss_c.to(at::kDouble), tol, tol), "%s: loss", what);
  EXPECT(at::allclose(e[1].to(at::kDouble), lse_c.to(at::kDouble), tol, tol), "%s: lse", what);
  const double gscale = std::max(1e-12, grad_c.to(at::kDouble).abs().max().item<double>());
  const double gerr = (e[4].to(at::kDouble) - grad_c.to(at::kDouble)).abs().max().item<double>();
  EXPECT(gerr <= tol * gscale, "%s: grad error %g vs max |grad| %g", what, gerr, gscale);
}

void test_supcon_kernels() {
  const Case cases[] = {
      {1, 4, 0, 1, at::kFloat, false, false},       {37, 13, 0, 37, at::kDouble, true, false},
      {130, 64, 5, 70, at::kFloat, true, false},    {200, 130, 0, 200, at::kFloat, false, false},
      {129, 1, 128, 1, at::kDouble, false, false},  {150, 72, 0, 150, at::kBFloat16, false, false},
      {150, 72, 0, 150, at::kHalf, true, false},    {257, 129, 11, 200, at::kBFloat16, true, false},
      {70, 136, 0, 70, at::kHalf, false, true},     {65, 8, 0, 65, at::kBFloat16, true, true},
      {300, 40, 250, 50, at::kHalf, false, false},  {97, 33, 0, 97, at::kFloat, true, true},
      {260, 136, 30, 150, at::kBFloat16, true, false, "sm_86"},  {130, 40, 0, 130, at::kDouble, false, false, "sm_120"},
      {400, 72, 0, 400, at::kHalf, false, false, "sm_90", 1},    {333, 50, 40, 200, at::kFloat, true, false, "sm_90", 1},
  };
  for (const auto& c : cases) test_supcon_case(c);
}

}  // namespace

int main() {
  const std::pair<const char*, void (*)()> tests[] = {
      {"conversions", test_conversions},
      {"missing barrier changes results", test_missing_barrier_changes_results},
      {"divergent barrier is an error", test_divergent_barrier_is_an_error},
      {"out-of-bounds accesses are caught", test_out_of_bounds_are_caught},
      {"poison shows uninitialized reads", test_poison_shows_uninitialized_reads},
      {"wmma", test_wmma},
      {"shuffle", test_shuffle},
      {"launch checks", test_launch_checks},
      {"mma.sync, ldmatrix, cp.async", test_mma_ldmatrix_cp_async},
      {"supcon kernels", test_supcon_kernels},
  };
  for (const auto& [name, fn] : tests) {
    const int before = g_failures;
    fn();
    std::printf("%s: %s\n", g_failures == before ? "ok  " : "FAIL", name);
    std::fflush(stdout);
  }
  std::printf("%d failure(s)\n", g_failures);
  return g_failures == 0 ? 0 : 1;
}
