// Internal state of the CUDA emulation's runtime, shared by its parts (not for kernels or host code):
//   emu_runtime.cpp  sessions, launches, barriers and warp collectives, WMMA bookkeeping;
//   emu_fibers.cpp   the threads of a block as fibers, and the scheduler that runs them;
//   emu_memory.cpp   shared-memory buffers (exact size, guard page, poison), faults, cp.async.
#pragma once

#include <signal.h>
#include <ucontext.h>

#include <csetjmp>
#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "emu_runtime.h"

#if defined(__SANITIZE_ADDRESS__)
#define SUPCON_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SUPCON_EMU_ASAN 1
#endif
#endif
#ifndef SUPCON_EMU_ASAN
#define SUPCON_EMU_ASAN 0
#endif
#if SUPCON_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if defined(__x86_64__) && defined(__linux__)
#define SUPCON_EMU_ASM_SWITCH 1
#else
#define SUPCON_EMU_ASM_SWITCH 0
#endif

namespace supcon_emu {
namespace detail {

constexpr std::size_t kStackBytes = 256 * 1024;
constexpr int64_t kDefaultDynamicSmem = 48 * 1024;  // without the opt-in attribute
constexpr std::size_t kPage = 4096;

enum class State : uint8_t { ready, block_barrier, warp_barrier, done };

struct Fiber {
#if SUPCON_EMU_ASM_SWITCH
  void* sp = nullptr;
#else
  ucontext_t ctx;
#endif
  char* stack = nullptr;  // kStackBytes usable, a guard page below
  uint3 tid{0, 0, 0};
  int linear = 0;
  State state = State::ready;
  const char* file = nullptr;  // where it waits
  int line = 0;
  uint64_t collectives = 0;    // warp collectives passed (parity selects the exchange slots)
  int static_decl = 0;         // static shared declarations reached
  uint64_t mmas = 0;           // WMMA mma_sync since the last block barrier
  uint64_t warp_ops = 0;       // WMMA loads / stores since the last block barrier
  struct AsyncCopy {
    void* dst;
    const void* src;
    std::size_t bytes, src_bytes;
  };
  std::vector<AsyncCopy> open_group;               // cp.async not yet committed
  std::vector<std::vector<AsyncCopy>> groups;      // committed, not yet waited for (oldest first)
#if SUPCON_EMU_ASAN
  void* fake_stack = nullptr;
#endif
};

struct Warp {
  unsigned arrived[2] = {0, 0};  // lanes waiting at the collective of each parity
  unsigned mask[2] = {0, 0};
  const char* what[2] = {nullptr, nullptr};
  uint64_t slots[2][32] = {};
  // warp_op: every lane's input and output, [32][bytes], per parity
  std::vector<unsigned char> ins[2], outs[2];
  std::size_t in_bytes[2] = {0, 0}, out_bytes[2] = {0, 0};
  std::vector<MmaMemo> memos;  // WMMA products since the last block barrier, by sequence number
};

// One shared-memory buffer of exactly `bytes`: with ASan a plain allocation (its redzones catch
// overruns); otherwise placed flush against a PROT_NONE page, with the alignment slack before it
// filled by a canary that is checked after the block.
struct SharedBuffer {
  std::string name;
  std::size_t bytes = 0, align = 1;
  char* map = nullptr;
  std::size_t map_bytes = 0;
  char* ptr = nullptr;
};

struct StaticDecl {
  SharedBuffer buf;
};

struct LaunchState {
  const LaunchSpec* spec = nullptr;
  KernelThunk thunk = nullptr;
  void* args = nullptr;
  uint3 block{0, 0, 0};
  int nthreads = 0;
  std::vector<Fiber>* fibers = nullptr;
  std::vector<Warp> warps;
  std::vector<int> order;
  int arrived = 0;  // threads at the block barrier
  int done = 0;
  const char* barrier_file = nullptr;
  int barrier_line = 0;
  bool released = false;  // a block barrier was released: restart the pass in the new order
  SharedBuffer dynamic;
  std::vector<StaticDecl> statics;
  int64_t static_bytes = 0;
  std::string error;
  std::mt19937_64 rng;
};

// ---- state of the session and of the launch being run (the emulation is single-threaded) ----
extern Config g_config;
extern bool g_active;
extern std::vector<LaunchRecord> g_launches;
extern std::map<const void*, int64_t> g_max_dynamic;  // per kernel, set by set_max_dynamic_smem
extern std::map<const void*, int64_t> g_static_seen;
extern LaunchState* g_launch;
extern Fiber* g_current;
extern std::vector<Fiber> g_fibers;  // stacks reused across launches

// ---- helpers (emu_runtime.cpp) ----
unsigned char poison_byte();
std::string where(const char* file, int line);
std::string fmt3(const uint3& v);
std::string context_of(const Fiber* f);
Fiber& self(const char* what);

// ---- fibers (emu_fibers.cpp) ----
char* new_stack();
void yield_to_scheduler(bool finished = false);
void run_block(LaunchState& L);

// ---- memory (emu_memory.cpp) ----
void buffer_alloc(SharedBuffer& b);
void buffer_free(SharedBuffer& b);
void buffer_poison(SharedBuffer& b);
void buffer_check(const SharedBuffer& b, const char* kind);
std::string describe_address(const void* addr);
// Faults during a kernel (builds without ASan) jump back to the launcher with a message.
extern sigjmp_buf g_fault_jmp;
extern volatile sig_atomic_t g_in_kernel;
extern char g_fault_msg[1024];
void install_fault_handler();
void remove_fault_handler();

}  // namespace detail
}  // namespace supcon_emu
