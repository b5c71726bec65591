// Runtime of the CUDA emulation: runs a kernel's grid on the CPU, the threads of a block as
// cooperative fibers between barriers, and checks what the hardware would reject or silently
// corrupt. Device-side API (threadIdx, __syncthreads, ...): emu_cuda.h; host side: emu_host.h.
//
// Model: blocks run one after another on the calling thread; within a block every thread is a
// fiber that runs until it reaches a barrier (__syncthreads, or a warp collective such as
// __shfl_xor_sync / __syncwarp), then the next fiber runs, in the configured order (ascending,
// descending or a seeded shuffle, re-drawn at every block barrier; blocks run in the same kind of
// order). A missing barrier or a shared-memory race therefore changes results between schedules.
// Shared memory is one allocation per declaration, of exactly the declared / launched size, filled
// with a poison pattern at block start; errors name the kernel, block, thread and source line.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace supcon_emu {

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

enum class Schedule { ascending, descending, shuffled };

// A GPU the host planning sees: its SM count and opt-in shared memory per block (bytes).
struct Arch {
  const char* name;
  const char* example;
  int sms;
  int smem_optin;
};
const std::vector<Arch>& known_archs();
const Arch& find_arch(const std::string& name);  // throws std::invalid_argument naming the choices

struct Config {
  Schedule schedule = Schedule::ascending;
  uint64_t seed = 0;
  int poison = 1;          // 1: 0xff bytes (NaN in every float view); 2: 0x7f bytes (finite / NaN mix)
  std::string arch = "sm_90";
  int sm_count = 0;        // > 0: the SM count the host planning sees instead of the arch's (a test knob)
};

struct LaunchRecord {
  std::string kernel;
  dim3 grid, block;
  int64_t dynamic_smem = 0, static_smem = 0;
};

// Session control (one session at a time, not thread-safe: the emulation is a test harness).
void start(const Config& config);
std::vector<LaunchRecord> stop();  // ends the session, returns its launches
bool active();
const Config& config();
Arch current_arch();  // the configured arch, with sm_count applied
std::string launches_json(const std::vector<LaunchRecord>& launches);

// ---- used by the device-side API (emu_cuda.h / emu_wmma.h) ----
const uint3& thread_idx();
const uint3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();
int lane_id();
void sync_threads(const char* file, int line);
void sync_warp(unsigned mask, const char* file, int line);
// Exchanges 64-bit payloads within the warp: returns the payload of lane (lane ^ lane_mask).
uint64_t shfl_xor_bits(unsigned mask, uint64_t bits, int lane_mask, int width, const char* file, int line);
// A warp-collective operation that moves data between lanes (ldmatrix, mma.sync): every lane of
// `mask` gives `in_bytes` and gets `out_bytes`; when the last lane arrives, compute(ins, outs) runs
// once with every lane's input and output laid out [32][bytes] by lane (lanes outside the mask: zero).
using WarpCompute = void (*)(const unsigned char* ins, unsigned char* outs, unsigned mask, void* ctx);
void warp_op(unsigned mask, const char* what, const void* in, std::size_t in_bytes, void* out, std::size_t out_bytes,
             WarpCompute compute, void* ctx, const char* file, int line);
bool is_shared(const void* p, std::size_t bytes);  // [p, p + bytes) inside one shared buffer of the block
// cp.async: a copy of `bytes` (src_bytes of them from src, the rest zero) that lands at the wait for
// its group; commit closes the open group; wait(n) lands every group but the n most recent.
void async_copy(void* dst, const void* src, std::size_t bytes, std::size_t src_bytes, const char* file, int line);
void async_commit();
void async_wait(int n);
void* static_shared(std::size_t bytes, std::size_t align, const char* name);
void* dynamic_shared();
[[noreturn]] void fail(const std::string& what, const char* file = nullptr, int line = 0);

// Warp-collective matrix ops (WMMA): every lane holds the whole tile; the product is computed
// once per warp and op, and every other lane checks that it holds the same inputs (a lane that
// loaded different data, e.g. through a race, fails the check) and takes the result.
struct MmaMemo {
  std::vector<unsigned char> inputs;
  std::vector<float> result;
};
struct MmaInputs {
  const void* ptr[3];  // the a, b and c fragments
  std::size_t bytes[3];
};
MmaMemo* mma_lookup(const MmaInputs& in, const char* file, int line);
void count_warp_op();  // a WMMA load / store: every lane of a warp must issue the same number

// ---- used by the host side (emu_host.h) ----
using KernelThunk = void (*)(void*);
struct LaunchSpec {
  std::string kernel;
  const void* kernel_id;  // the kernel function, for its shared-memory opt-in
  dim3 grid, block;
  int64_t dynamic_smem;
  int max_threads;        // the kernel's __launch_bounds__ (0: none, 1024 allowed)
};
void launch(const LaunchSpec& spec, KernelThunk thunk, void* args);
void set_max_dynamic_smem(const void* kernel_id, int64_t bytes);  // cudaFuncAttributeMaxDynamicSharedMemorySize
int64_t static_smem_of(const void* kernel_id);                    // as seen in earlier launches (0 before)

}  // namespace supcon_emu
