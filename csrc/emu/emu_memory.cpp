// Shared memory of the emulated blocks (one exact-size buffer per declaration, guard pages, poison,
// canaries), faults during kernels, and cp.async's deferred copies.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <stdexcept>

#include "emu_internal.h"

namespace supcon_emu {
namespace detail {

const unsigned char kCanary = 0xa5;

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

}  // namespace detail

using namespace detail;

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

void* dynamic_shared() {
  self("extern __shared__");
  return g_launch->dynamic.ptr;
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

}  // namespace supcon_emu
