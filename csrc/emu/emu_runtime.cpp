// The CUDA emulation's runtime: sessions, launches, the fiber scheduler of a block, shared-memory
// allocations and the checks (see emu_runtime.h for the model).
#include "emu_runtime.h"

#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <map>
#include <numeric>
#include <random>
#include <sstream>
#include <stdexcept>

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

// Fiber switches. x86-64: a few instructions (callee-saved registers, MXCSR and the x87 control
// word), since glibc's swapcontext makes a sigprocmask system call per switch and a block switches
// hundreds of times per barrier. Elsewhere: ucontext.
#if defined(__x86_64__) && defined(__linux__)
#define SUPCON_EMU_ASM_SWITCH 1
extern "C" {
void supcon_emu_switch(void** save_sp, void* load_sp);  // saves the current context, resumes another
void supcon_emu_trampoline();                           // a new fiber's first return address
__attribute__((visibility("hidden"))) void supcon_emu_fiber_main();
}
asm(R"(
  .text
  .globl supcon_emu_switch
  .hidden supcon_emu_switch
  .type supcon_emu_switch, @function
supcon_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size supcon_emu_switch, .-supcon_emu_switch

  .globl supcon_emu_trampoline
  .hidden supcon_emu_trampoline
  .type supcon_emu_trampoline, @function
supcon_emu_trampoline:
  andq $-16, %rsp
  call supcon_emu_fiber_main
  ud2
  .size supcon_emu_trampoline, .-supcon_emu_trampoline
)");
#else
#define SUPCON_EMU_ASM_SWITCH 0
#endif

namespace supcon_emu {

namespace {

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

Config g_config;
bool g_active = false;
std::vector<LaunchRecord> g_launches;
std::map<const void*, int64_t> g_max_dynamic;  // per kernel, set by set_max_dynamic_smem
std::map<const void*, int64_t> g_static_seen;
LaunchState* g_launch = nullptr;
Fiber* g_current = nullptr;
#if SUPCON_EMU_ASM_SWITCH
void* g_sched_sp = nullptr;
#else
ucontext_t g_sched_ctx;
#endif
std::vector<Fiber> g_fibers;  // stacks reused across launches
#if SUPCON_EMU_ASAN
void* g_sched_fake_stack = nullptr;
const void* g_main_stack_bottom = nullptr;
std::size_t g_main_stack_size = 0;
#endif

const unsigned char kCanary = 0xa5;

unsigned char poison_byte() { return g_config.poison == 2 ? 0x7f : 0xff; }

std::string where(const char* file, int line) {
  if (file == nullptr) return "";
  std::string f(file);
  const auto slash = f.find("csrc/");
  return " at " + (slash == std::string::npos ? f : f.substr(slash)) + ":" + std::to_string(line);
}

std::string fmt3(const uint3& v) {
  return "(" + std::to_string(v.x) + ", " + std::to_string(v.y) + ", " + std::to_string(v.z) + ")";
}

std::string context_of(const Fiber* f) {
  if (g_launch == nullptr) return "";
  std::string s = " [kernel " + g_launch->spec->kernel + ", block " + fmt3(g_launch->block);
  if (f != nullptr) s += ", thread " + fmt3(f->tid);
  return s + "]";
}

// ---- shared buffers ----
void buffer_alloc(SharedBuffer& b) {
  if (b.bytes == 0) {
    b.ptr = nullptr;
    return;
  }
#if SUPCON_EMU_ASAN
  b.map_bytes = 0;
  b.ptr = static_cast<char*>(::operator new(b.bytes, std::align_val_t(std::max<std::size_t>(b.align, 16))));
#else
  const std::size_t usable = (b.bytes + b.align - 1) / b.align * b.align;
  b.map_bytes = (usable + kPage - 1) / kPage * kPage + 2 * kPage;  // guard pages on both sides
  void* m = mmap(nullptr, b.map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) throw std::runtime_error("CUDA emulation: out of memory for shared memory");
  b.map = static_cast<char*>(m);
  mprotect(b.map, kPage, PROT_NONE);
  mprotect(b.map + b.map_bytes - kPage, kPage, PROT_NONE);
  char* end = b.map + b.map_bytes - kPage;
  // Flush against the upper guard page where the alignment allows it; else the gap is a canary.
  b.ptr = reinterpret_cast<char*>((reinterpret_cast<std::uintptr_t>(end) - b.bytes) & ~(b.align - 1));
#endif
}

void buffer_free(SharedBuffer& b) {
#if SUPCON_EMU_ASAN
  if (b.ptr != nullptr) ::operator delete(b.ptr, std::align_val_t(std::max<std::size_t>(b.align, 16)));
#else
  if (b.map != nullptr) munmap(b.map, b.map_bytes);
#endif
  b.map = nullptr;
  b.ptr = nullptr;
}

void buffer_poison(SharedBuffer& b) {
  if (b.ptr == nullptr) return;
  std::memset(b.ptr, poison_byte(), b.bytes);
#if !SUPCON_EMU_ASAN
  char* lo = b.map + kPage;
  char* hi = b.map + b.map_bytes - kPage;
  std::memset(lo, kCanary, b.ptr - lo);
  std::memset(b.ptr + b.bytes, kCanary, hi - (b.ptr + b.bytes));
#endif
}

void buffer_check(const SharedBuffer& b, const char* kind) {
#if !SUPCON_EMU_ASAN
  if (b.ptr == nullptr) return;
  const char* lo = b.map + kPage;
  const char* hi = b.map + b.map_bytes - kPage;
  for (const char* p = lo; p < hi; ++p) {
    if (p == b.ptr) p += b.bytes;
    if (p < hi && static_cast<unsigned char>(*p) != kCanary) {
      const long off = p < b.ptr ? -static_cast<long>(b.ptr - p) : static_cast<long>(p - b.ptr);
      throw std::runtime_error("CUDA emulation: out-of-bounds write to " + std::string(kind) + " shared memory '" +
                               b.name + "' (" + std::to_string(b.bytes) + " bytes) at byte offset " +
                               std::to_string(off) + context_of(nullptr));
    }
  }
#else
  (void)b;
  (void)kind;
#endif
}

// Names the shared buffer (or guard page) an address falls in, for the fault message.
std::string describe_address(const void* addr) {
  const char* a = static_cast<const char*>(addr);
  auto in = [&](const SharedBuffer& b, const char* kind) -> std::string {
    if (b.map == nullptr || a < b.map || a >= b.map + b.map_bytes) return "";
    const long off = static_cast<long>(a - b.ptr);
    return std::string(kind) + " shared memory '" + b.name + "' (" + std::to_string(b.bytes) + " bytes), byte offset " +
           std::to_string(off) + (off < 0 ? " (before its start)" : " (past its end)");
  };
  if (g_launch != nullptr) {
    std::string s = in(g_launch->dynamic, "dynamic");
    if (!s.empty()) return s;
    for (const auto& d : g_launch->statics) {
      s = in(d.buf, "static");
      if (!s.empty()) return s;
    }
  }
  return "no shared buffer: global memory out of bounds, or a fiber stack overflow";
}

// ---- fibers ----
void fiber_entry();

// Prepares f to start in fiber_entry at its next switch.
void start_context(Fiber& f) {
#if SUPCON_EMU_ASM_SWITCH
  // The frame supcon_emu_switch pops: MXCSR / x87 control word, r15..r12, rbx, rbp, return address.
  auto* top = reinterpret_cast<uint64_t*>(f.stack + kStackBytes);
  uint64_t* sp = top - 8;
  const uint32_t csr[2] = {0x1f80u, 0x037fu};  // default MXCSR; x87 control word
  std::memcpy(sp, csr, 8);
  for (int i = 1; i <= 6; ++i) sp[i] = 0;
  sp[7] = reinterpret_cast<uint64_t>(&supcon_emu_trampoline);
  f.sp = sp;
#else
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = f.stack;
  f.ctx.uc_stack.ss_size = kStackBytes;
  f.ctx.uc_link = nullptr;
  makecontext(&f.ctx, fiber_entry, 0);
#endif
}

char* new_stack() {
  void* m = mmap(nullptr, kStackBytes + kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) throw std::runtime_error("CUDA emulation: cannot map fiber stacks");
  mprotect(m, kPage, PROT_NONE);  // stacks grow down: overflow faults
  return static_cast<char*>(m) + kPage;
}

void switch_to_fiber(Fiber& f) {
  g_current = &f;
#if SUPCON_EMU_ASAN
  __sanitizer_start_switch_fiber(&g_sched_fake_stack, f.stack, kStackBytes);
#endif
#if SUPCON_EMU_ASM_SWITCH
  supcon_emu_switch(&g_sched_sp, f.sp);
#else
  swapcontext(&g_sched_ctx, &f.ctx);
#endif
#if SUPCON_EMU_ASAN
  __sanitizer_finish_switch_fiber(g_sched_fake_stack, nullptr, nullptr);
#endif
  g_current = nullptr;
}

void yield_to_scheduler(bool finished = false) {
  Fiber* f = g_current;
#if SUPCON_EMU_ASAN
  __sanitizer_start_switch_fiber(finished ? nullptr : &f->fake_stack, g_main_stack_bottom, g_main_stack_size);
#else
  (void)finished;
#endif
#if SUPCON_EMU_ASM_SWITCH
  supcon_emu_switch(&f->sp, g_sched_sp);
#else
  swapcontext(&f->ctx, &g_sched_ctx);
#endif
#if SUPCON_EMU_ASAN
  __sanitizer_finish_switch_fiber(f->fake_stack, &g_main_stack_bottom, &g_main_stack_size);
#endif
}

void fiber_entry() {
#if SUPCON_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &g_main_stack_bottom, &g_main_stack_size);
#endif
  g_launch->thunk(g_launch->args);
  Fiber* f = g_current;
  if (!f->open_group.empty() || !f->groups.empty())
    fail("cp.async: the thread exits with copies it never waited for (a missing cp.async.wait_group)");
  f->state = State::done;
  ++g_launch->done;
  yield_to_scheduler(true);
  std::abort();  // a finished fiber is never resumed
}

Fiber& self(const char* what) {
  if (g_current == nullptr) throw std::logic_error(std::string("CUDA emulation: ") + what + " outside a kernel");
  return *g_current;
}

void make_order(std::vector<int>& order, int n, Schedule s, std::mt19937_64& rng) {
  order.resize(n);
  std::iota(order.begin(), order.end(), 0);
  if (s == Schedule::descending) std::reverse(order.begin(), order.end());
  if (s == Schedule::shuffled) std::shuffle(order.begin(), order.end(), rng);
}

std::string state_name(const Fiber& f) {
  switch (f.state) {
    case State::ready: return "running";
    case State::block_barrier: return "at __syncthreads" + where(f.file, f.line);
    case State::warp_barrier: return "at a warp collective" + where(f.file, f.line);
    case State::done: return "exited";
  }
  return "?";
}

// Every lane of a warp must issue the same WMMA operations between two block barriers.
void check_warp_ops(LaunchState& L) {
  auto& fibers = *L.fibers;
  for (int t = 0; t < L.nthreads; ++t) {
    const int first = t / 32 * 32;
    if (fibers[t].mmas != fibers[first].mmas || fibers[t].warp_ops != fibers[first].warp_ops) {
      L.error = "WMMA operations are warp-collective, but thread " + fmt3(fibers[t].tid) + " issued " +
                std::to_string(fibers[t].mmas) + " mma / " + std::to_string(fibers[t].warp_ops) +
                " load-store and lane 0 of its warp " + std::to_string(fibers[first].mmas) + " / " +
                std::to_string(fibers[first].warp_ops) + " since the last barrier" + context_of(nullptr);
      return;
    }
  }
  for (int t = 0; t < L.nthreads; ++t) fibers[t].mmas = fibers[t].warp_ops = 0;
  for (auto& w : L.warps) w.memos.clear();
}

void deadlock(LaunchState& L) {
  auto& fibers = *L.fibers;
  std::ostringstream os;
  os << "barrier not reached by every thread of the block (a __syncthreads or warp collective in divergent code, "
        "or after some threads exited):";
  int shown = 0;
  for (int t = 0; t < L.nthreads && shown < 6; ++t) {
    if (t > 0 && fibers[t].state == fibers[t - 1].state && fibers[t].line == fibers[t - 1].line) continue;
    os << " thread " << fmt3(fibers[t].tid) << " " << state_name(fibers[t]) << ";";
    ++shown;
  }
  L.error = os.str() + context_of(nullptr);
}

void run_block(LaunchState& L) {
  auto& fibers = *L.fibers;
  const dim3 bd = L.spec->block;
  for (int t = 0; t < L.nthreads; ++t) {
    Fiber& f = fibers[t];
    f.tid = uint3{t % bd.x, (t / bd.x) % bd.y, t / (bd.x * bd.y)};
    f.linear = t;
    f.state = State::ready;
    f.collectives = 0;
    f.static_decl = 0;
    f.mmas = f.warp_ops = 0;
    f.open_group.clear();
    f.groups.clear();
    f.file = nullptr;
#if SUPCON_EMU_ASAN
    __asan_unpoison_memory_region(f.stack, kStackBytes);
#endif
    start_context(f);
  }
  L.warps.assign((L.nthreads + 31) / 32, Warp{});
  L.arrived = L.done = 0;
  make_order(L.order, L.nthreads, g_config.schedule, L.rng);
  while (L.done < L.nthreads) {
    bool ran = false;
    L.released = false;
    for (int i = 0; i < L.nthreads && !L.released; ++i) {
      Fiber& f = fibers[L.order[i]];
      if (f.state != State::ready) continue;
      switch_to_fiber(f);
      ran = true;
      if (!L.error.empty()) return;
    }
    if (L.released) {
      check_warp_ops(L);
      if (!L.error.empty()) return;
      if (g_config.schedule == Schedule::shuffled) make_order(L.order, L.nthreads, g_config.schedule, L.rng);
      continue;
    }
    if (!ran && L.done < L.nthreads) {
      deadlock(L);
      return;
    }
  }
  check_warp_ops(L);
}

// ---- faults (builds without ASan: a guard page or a wild access) ----
sigjmp_buf g_fault_jmp;
volatile sig_atomic_t g_in_kernel = 0;
char g_fault_msg[1024];
struct sigaction g_old_segv, g_old_bus;
stack_t g_old_altstack;
std::vector<char> g_altstack;

void on_fault(int sig, siginfo_t* info, void*) {
  if (!g_in_kernel) {  // not ours: the previous handler's business
    sigaction(sig, sig == SIGSEGV ? &g_old_segv : &g_old_bus, nullptr);
    raise(sig);
    return;
  }
  const std::string d = describe_address(info->si_addr);
  std::snprintf(g_fault_msg, sizeof(g_fault_msg), "invalid memory access (%s) at address %p: %s%s",
                sig == SIGSEGV ? "SIGSEGV" : "SIGBUS", info->si_addr, d.c_str(), context_of(g_current).c_str());
  siglongjmp(g_fault_jmp, 1);
}

void install_fault_handler() {
#if !SUPCON_EMU_ASAN
  g_altstack.resize(1 << 16);
  stack_t ss{};
  ss.ss_sp = g_altstack.data();
  ss.ss_size = g_altstack.size();
  sigaltstack(&ss, &g_old_altstack);
  struct sigaction sa{};
  sa.sa_sigaction = on_fault;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGSEGV, &sa, &g_old_segv);
  sigaction(SIGBUS, &sa, &g_old_bus);
#endif
}

void remove_fault_handler() {
#if !SUPCON_EMU_ASAN
  sigaction(SIGSEGV, &g_old_segv, nullptr);
  sigaction(SIGBUS, &g_old_bus, nullptr);
  sigaltstack(&g_old_altstack, nullptr);
#endif
}

void check_launch(const LaunchSpec& s) {
  auto bad = [&](const std::string& why) {
    throw std::runtime_error("CUDA emulation: launch of " + s.kernel + " rejected: " + why);
  };
  const int64_t threads = int64_t(s.block.x) * s.block.y * s.block.z;
  if (s.grid.x == 0 || s.grid.y == 0 || s.grid.z == 0 || threads == 0) bad("empty grid or block");
  if (s.grid.x > 2147483647u || s.grid.y > 65535u || s.grid.z > 65535u)
    bad("grid " + fmt3(uint3{s.grid.x, s.grid.y, s.grid.z}) + " over the limits (2^31 - 1, 65535, 65535)");
  if (s.block.x > 1024 || s.block.y > 1024 || s.block.z > 64 || threads > 1024)
    bad("block " + fmt3(uint3{s.block.x, s.block.y, s.block.z}) + " over 1024 threads or the per-dimension limits");
  if (s.max_threads > 0 && threads != s.max_threads)
    bad("block of " + std::to_string(threads) + " threads, but the kernel is built for __launch_bounds__(" +
        std::to_string(s.max_threads) + ")");
  const auto it = g_max_dynamic.find(s.kernel_id);
  const int64_t allowed = it == g_max_dynamic.end() ? kDefaultDynamicSmem : it->second;
  if (s.dynamic_smem > allowed)
    bad(std::to_string(s.dynamic_smem) + " bytes of dynamic shared memory, over the " + std::to_string(allowed) +
        " allowed (above 48 KB needs cudaFuncAttributeMaxDynamicSharedMemorySize)");
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------------
const std::vector<Arch>& known_archs() {
  static const std::vector<Arch> archs = {
      {"sm_80", "A100", 108, 166912}, {"sm_86", "A10", 72, 101376},  {"sm_89", "L40S", 142, 101376},
      {"sm_90", "H200", 132, 232448}, {"sm_100", "B200", 148, 232448}, {"sm_120", "RTX 5090", 170, 101376},
  };
  return archs;
}

const Arch& find_arch(const std::string& name) {
  std::string names;
  for (const auto& a : known_archs()) {
    if (name == a.name) return a;
    names += std::string(names.empty() ? "" : ", ") + a.name;
  }
  throw std::invalid_argument("arch must be one of " + names + ", got '" + name + "'");
}

#if SUPCON_EMU_ASAN
// A sanitizer report ends the process: say where in the emulated grid it happened.
void on_sanitizer_death() {
  if (g_launch != nullptr)
    std::fprintf(stderr, "CUDA emulation: the error above happened in%s\n", context_of(g_current).c_str());
}
#endif

void start(const Config& c) {
#if SUPCON_EMU_ASAN
  __sanitizer_set_death_callback(on_sanitizer_death);
#endif
  if (g_active) throw std::logic_error("CUDA emulation is already active (sessions do not nest)");
  if (c.poison != 1 && c.poison != 2) throw std::invalid_argument("poison must be 1 or 2, got " + std::to_string(c.poison));
  find_arch(c.arch);
  if (c.sm_count < 0) throw std::invalid_argument("sm_count must be >= 0, got " + std::to_string(c.sm_count));
  g_config = c;
  g_launches.clear();
  g_max_dynamic.clear();
  g_static_seen.clear();
  g_active = true;
}

std::vector<LaunchRecord> stop() {
  g_active = false;
  return std::move(g_launches);
}

bool active() { return g_active; }
const Config& config() { return g_config; }
Arch current_arch() {
  Arch a = find_arch(g_config.arch);
  if (g_config.sm_count > 0) a.sms = g_config.sm_count;
  return a;
}

std::string launches_json(const std::vector<LaunchRecord>& launches) {
  std::ostringstream os;
  os << "[";
  for (std::size_t i = 0; i < launches.size(); ++i) {
    const auto& r = launches[i];
    os << (i ? ", " : "") << "{\"kernel\": \"" << r.kernel << "\", \"grid\": [" << r.grid.x << ", " << r.grid.y << ", "
       << r.grid.z << "], \"block\": [" << r.block.x << ", " << r.block.y << ", " << r.block.z
       << "], \"dynamic_smem\": " << r.dynamic_smem << ", \"static_smem\": " << r.static_smem << "}";
  }
  os << "]";
  return os.str();
}

// ---------------------------------------------------------------------------------------------
// Device side
// ---------------------------------------------------------------------------------------------
const uint3& thread_idx() { return self("threadIdx").tid; }
const uint3& block_idx() {
  self("blockIdx");
  return g_launch->block;
}
const dim3& block_dim() {
  self("blockDim");
  return g_launch->spec->block;
}
const dim3& grid_dim() {
  self("gridDim");
  return g_launch->spec->grid;
}
int lane_id() { return self("lane id").linear % 32; }

void fail(const std::string& what, const char* file, int line) {
  Fiber* f = g_current;
  if (f == nullptr || g_launch == nullptr) throw std::runtime_error("CUDA emulation: " + what + where(file, line));
  g_launch->error = what + where(file, line) + context_of(f);
  yield_to_scheduler();
  std::abort();  // a failed fiber is never resumed
}

void sync_threads(const char* file, int line) {
  Fiber& f = self("__syncthreads");
  LaunchState& L = *g_launch;
  if (L.arrived == 0) {
    L.barrier_file = file;
    L.barrier_line = line;
  } else if (line != L.barrier_line || std::strcmp(file, L.barrier_file) != 0) {
    fail("threads meet at different __syncthreads: this one, and" + where(L.barrier_file, L.barrier_line) +
             " (a barrier in divergent code)",
         file, line);
  }
  f.state = State::block_barrier;
  f.file = file;
  f.line = line;
  if (++L.arrived == L.nthreads) {
    for (auto& g : *L.fibers)
      if (g.state == State::block_barrier) g.state = State::ready;
    L.arrived = 0;
    L.released = true;
  } else if (L.done > 0) {
    fail("__syncthreads reached after some threads of the block exited (a barrier not reached by every thread)", file,
         line);
  }
  yield_to_scheduler();
}

namespace {
// Arrives at a warp collective, waits for every lane of the mask, returns the parity slot used.
// A warp_op's data: its input is copied in at arrival; the last lane runs compute before releasing.
struct WarpData {
  const void* in = nullptr;
  std::size_t in_bytes = 0, out_bytes = 0;
  WarpCompute compute = nullptr;
  void* ctx = nullptr;
};

int warp_collective(unsigned mask, const char* what, uint64_t payload, const char* file, int line,
                    const WarpData* data = nullptr) {
  Fiber& f = self(what);
  LaunchState& L = *g_launch;
  const int lane = f.linear % 32, wi = f.linear / 32;
  const int lanes_here = std::min(32, L.nthreads - wi * 32);
  const unsigned present = lanes_here == 32 ? 0xffffffffu : ((1u << lanes_here) - 1u);
  if (!(mask >> lane & 1u)) fail(std::string(what) + ": the calling lane is not in the mask", file, line);
  if (mask & ~present) fail(std::string(what) + ": the mask names lanes that do not exist in this block", file, line);
  Warp& w = L.warps[wi];
  const int p = static_cast<int>(f.collectives & 1u);
  const std::size_t in_bytes = data ? data->in_bytes : 0, out_bytes = data ? data->out_bytes : 0;
  if (w.arrived[p] == 0) {
    w.mask[p] = mask;
    w.what[p] = what;
    w.in_bytes[p] = in_bytes;
    w.out_bytes[p] = out_bytes;
    w.ins[p].assign(32 * in_bytes, 0);
    w.outs[p].assign(32 * out_bytes, 0);
  } else if (w.mask[p] != mask || std::strcmp(w.what[p], what) != 0 || w.in_bytes[p] != in_bytes ||
             w.out_bytes[p] != out_bytes) {
    fail(std::string(what) + ": lanes of the warp meet at different collectives or masks (" + w.what[p] + ")", file,
         line);
  }
  w.slots[p][lane] = payload;
  if (in_bytes > 0) std::memcpy(w.ins[p].data() + lane * in_bytes, data->in, in_bytes);
  w.arrived[p] |= 1u << lane;
  ++f.collectives;
  f.file = file;
  f.line = line;
  if (w.arrived[p] == mask) {
    w.arrived[p] = 0;
    if (data != nullptr && data->compute != nullptr) data->compute(w.ins[p].data(), w.outs[p].data(), mask, data->ctx);
    for (int l = 0; l < lanes_here; ++l) {
      Fiber& g = (*L.fibers)[wi * 32 + l];
      if ((mask >> l & 1u) && g.state == State::warp_barrier) g.state = State::ready;
    }
    return p;  // the last lane to arrive goes on
  }
  for (int l = 0; l < lanes_here; ++l)
    if ((mask >> l & 1u) && (*L.fibers)[wi * 32 + l].state == State::done)
      fail(std::string(what) + ": a lane of the mask has exited", file, line);
  f.state = State::warp_barrier;
  yield_to_scheduler();
  return p;
}
}  // namespace

void sync_warp(unsigned mask, const char* file, int line) { warp_collective(mask, "__syncwarp", 0, file, line); }

void warp_op(unsigned mask, const char* what, const void* in, std::size_t in_bytes, void* out, std::size_t out_bytes,
             WarpCompute compute, void* ctx, const char* file, int line) {
  WarpData data;
  data.in = in;
  data.in_bytes = in_bytes;
  data.out_bytes = out_bytes;
  data.compute = compute;
  data.ctx = ctx;
  const int p = warp_collective(mask, what, 0, file, line, &data);
  const Warp& w = g_launch->warps[g_current->linear / 32];
  if (out_bytes > 0) std::memcpy(out, w.outs[p].data() + (g_current->linear % 32) * out_bytes, out_bytes);
}

uint64_t shfl_xor_bits(unsigned mask, uint64_t bits, int lane_mask, int width, const char* file, int line) {
  if (width <= 0 || width > 32 || (width & (width - 1)) != 0)
    fail("__shfl_xor_sync: width must be a power of two <= 32", file, line);
  const int p = warp_collective(mask, "__shfl_xor_sync", bits, file, line);
  const int lane = g_current->linear % 32;
  const int src = lane ^ lane_mask;
  if ((src & ~(width - 1)) != (lane & ~(width - 1))) return bits;  // outside the segment: own value
  if (!(mask >> src & 1u)) fail("__shfl_xor_sync: the source lane is not in the mask", file, line);
  return g_launch->warps[g_current->linear / 32].slots[p][src];
}

void* static_shared(std::size_t bytes, std::size_t align, const char* name) {
  Fiber& f = self("__shared__");
  LaunchState& L = *g_launch;
  const std::size_t k = static_cast<std::size_t>(f.static_decl++);
  if (k < L.statics.size()) {
    const auto& d = L.statics[k];
    if (d.buf.name != name || d.buf.bytes != bytes)
      fail("threads declare different __shared__ arrays ('" + d.buf.name + "' and '" + name + "')");
    return d.buf.ptr;
  }
  const int64_t limit = current_arch().smem_optin;
  if (L.static_bytes + int64_t(bytes) + L.spec->dynamic_smem > limit)
    fail("shared memory over the opt-in limit of " + g_config.arch + " (" + std::to_string(limit) + " bytes): " +
         std::to_string(L.static_bytes + bytes) + " static + " + std::to_string(L.spec->dynamic_smem) + " dynamic");
  L.statics.emplace_back();
  SharedBuffer& b = L.statics.back().buf;
  b.name = name;
  b.bytes = bytes;
  b.align = align;
  buffer_alloc(b);
  buffer_poison(b);
  L.static_bytes += static_cast<int64_t>(bytes);
  return b.ptr;
}

bool is_shared(const void* p, std::size_t bytes) {
  self("shared-memory check");
  const char* a = static_cast<const char*>(p);
  auto inside = [&](const SharedBuffer& b) { return b.ptr != nullptr && a >= b.ptr && a + bytes <= b.ptr + b.bytes; };
  if (inside(g_launch->dynamic)) return true;
  for (const auto& d : g_launch->statics)
    if (inside(d.buf)) return true;
  return false;
}

void async_copy(void* dst, const void* src, std::size_t bytes, std::size_t src_bytes, const char* file, int line) {
  Fiber& f = self("cp.async");
  if (reinterpret_cast<std::uintptr_t>(dst) % bytes != 0 ||
      (src_bytes > 0 && reinterpret_cast<std::uintptr_t>(src) % bytes != 0))
    fail("cp.async: addresses not aligned to the copy size", file, line);
  if (!is_shared(dst, bytes)) fail("cp.async: destination not in shared memory", file, line);
  f.open_group.push_back({dst, src, bytes, src_bytes});
}

void async_commit() {
  Fiber& f = self("cp.async.commit_group");
  f.groups.push_back(std::move(f.open_group));
  f.open_group.clear();
}

void async_wait(int n) {
  Fiber& f = self("cp.async.wait_group");
  while (static_cast<int>(f.groups.size()) > n) {
    for (const auto& c : f.groups.front()) {
      std::memcpy(c.dst, c.src, c.src_bytes);
      std::memset(static_cast<char*>(c.dst) + c.src_bytes, 0, c.bytes - c.src_bytes);
    }
    f.groups.erase(f.groups.begin());
  }
}

void* dynamic_shared() {
  self("extern __shared__");
  return g_launch->dynamic.ptr;
}

MmaMemo* mma_lookup(const MmaInputs& in, const char* file, int line) {
  Fiber& f = self("wmma::mma_sync");
  Warp& w = g_launch->warps[f.linear / 32];
  const uint64_t k = f.mmas++;
  if (k < w.memos.size()) {
    MmaMemo& m = w.memos[k];
    std::size_t off = 0;
    for (int i = 0; i < 3; ++i) {
      if (off + in.bytes[i] > m.inputs.size() || std::memcmp(m.inputs.data() + off, in.ptr[i], in.bytes[i]) != 0)
        fail("wmma::mma_sync: lanes of the warp hold different fragments (a shared-memory race, or a divergent load)",
             file, line);
      off += in.bytes[i];
    }
    return &m;
  }
  w.memos.emplace_back();
  MmaMemo& m = w.memos.back();
  for (int i = 0; i < 3; ++i) {
    const auto* p = static_cast<const unsigned char*>(in.ptr[i]);
    m.inputs.insert(m.inputs.end(), p, p + in.bytes[i]);
  }
  return &m;
}

void count_warp_op() { ++self("wmma").warp_ops; }

// ---------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------
void set_max_dynamic_smem(const void* kernel_id, int64_t bytes) {
  const int64_t limit = current_arch().smem_optin;
  if (bytes > limit)
    throw std::runtime_error("CUDA emulation: cudaFuncSetAttribute(MaxDynamicSharedMemorySize, " +
                             std::to_string(bytes) + ") over the opt-in limit of " + g_config.arch + " (" +
                             std::to_string(limit) + " bytes)");
  g_max_dynamic[kernel_id] = bytes;
}

int64_t static_smem_of(const void* kernel_id) {
  const auto it = g_static_seen.find(kernel_id);
  return it == g_static_seen.end() ? 0 : it->second;
}

void launch(const LaunchSpec& spec, KernelThunk thunk, void* args) {
  if (!g_active) throw std::logic_error("CUDA emulation: launch outside an emulation session");
  if (g_launch != nullptr) throw std::logic_error("CUDA emulation: launch from inside a kernel");
  check_launch(spec);
  LaunchState L;
  L.spec = &spec;
  L.thunk = thunk;
  L.args = args;
  L.nthreads = static_cast<int>(spec.block.x * spec.block.y * spec.block.z);
  L.rng.seed(g_config.seed * 0x9e3779b97f4a7c15ull + g_launches.size());
  while (static_cast<int>(g_fibers.size()) < L.nthreads) {
    g_fibers.emplace_back();
    g_fibers.back().stack = new_stack();
  }
  L.fibers = &g_fibers;
  L.dynamic.name = "extern __shared__";
  L.dynamic.bytes = static_cast<std::size_t>(spec.dynamic_smem);
  L.dynamic.align = 128;
  buffer_alloc(L.dynamic);

  const uint64_t nblocks = uint64_t(spec.grid.x) * spec.grid.y * spec.grid.z;
  std::vector<uint64_t> blocks(nblocks);
  std::iota(blocks.begin(), blocks.end(), 0);
  if (g_config.schedule == Schedule::descending) std::reverse(blocks.begin(), blocks.end());
  if (g_config.schedule == Schedule::shuffled) std::shuffle(blocks.begin(), blocks.end(), L.rng);

  g_launch = &L;
  install_fault_handler();
  std::string error;
  if (sigsetjmp(g_fault_jmp, 1) != 0) {
    g_in_kernel = 0;
    error = g_fault_msg;
  } else {
    try {
      for (const uint64_t b : blocks) {
        L.block = uint3{static_cast<unsigned>(b % spec.grid.x), static_cast<unsigned>(b / spec.grid.x % spec.grid.y),
                        static_cast<unsigned>(b / (uint64_t(spec.grid.x) * spec.grid.y))};
        buffer_poison(L.dynamic);
        for (auto& d : L.statics) buffer_free(d.buf);
        L.statics.clear();
        L.static_bytes = 0;
        g_in_kernel = 1;
        run_block(L);
        g_in_kernel = 0;
        if (!L.error.empty()) break;
        buffer_check(L.dynamic, "dynamic");
        for (const auto& d : L.statics) buffer_check(d.buf, "static");
      }
    } catch (const std::exception& e) {
      g_in_kernel = 0;
      error = e.what();
    }
    if (error.empty()) error = L.error;
  }
  remove_fault_handler();
  g_static_seen[spec.kernel_id] = L.static_bytes;
  for (auto& d : L.statics) buffer_free(d.buf);
  buffer_free(L.dynamic);
  g_launch = nullptr;
  g_current = nullptr;
  if (!error.empty()) {
    if (error.rfind("CUDA emulation", 0) != 0) error = "CUDA emulation: " + error;
    throw std::runtime_error(error);
  }
  g_launches.push_back(LaunchRecord{spec.kernel, spec.grid, spec.block, spec.dynamic_smem, L.static_bytes});
}

}  // namespace supcon_emu

#if SUPCON_EMU_ASM_SWITCH
extern "C" void supcon_emu_fiber_main() { supcon_emu::fiber_entry(); }
#endif
