// The threads of an emulated block as cooperative fibers, and the scheduler that runs them between
// barriers in the session's order (emu_runtime.h describes the model).
#include <sys/mman.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <sstream>
#include <stdexcept>

#include "emu_internal.h"

// Fiber switches. x86-64: a few instructions (callee-saved registers, MXCSR and the x87 control
// word), since glibc's swapcontext makes a sigprocmask system call per switch and a block switches
// hundreds of times per barrier. Elsewhere: ucontext.
#if SUPCON_EMU_ASM_SWITCH
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
#endif

namespace supcon_emu {
namespace detail {

#if SUPCON_EMU_ASM_SWITCH
void* g_sched_sp = nullptr;
#else
ucontext_t g_sched_ctx;
#endif
#if SUPCON_EMU_ASAN
void* g_sched_fake_stack = nullptr;
const void* g_main_stack_bottom = nullptr;
std::size_t g_main_stack_size = 0;
#endif

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

void yield_to_scheduler(bool finished) {
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

}  // namespace detail
}  // namespace supcon_emu

#if SUPCON_EMU_ASM_SWITCH
extern "C" void supcon_emu_fiber_main() { supcon_emu::detail::fiber_entry(); }
#endif
