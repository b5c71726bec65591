// The CUDA emulation's runtime: sessions, launches, barriers and warp collectives (see emu_runtime.h
// for the model; the fibers and the scheduler: emu_fibers.cpp; shared memory and faults: emu_memory.cpp).
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <sstream>
#include <stdexcept>

#include "emu_internal.h"

namespace supcon_emu {
namespace detail {

Config g_config;
bool g_active = false;
std::vector<LaunchRecord> g_launches;
std::map<const void*, int64_t> g_max_dynamic;
std::map<const void*, int64_t> g_static_seen;
LaunchState* g_launch = nullptr;
Fiber* g_current = nullptr;
std::vector<Fiber> g_fibers;

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

Fiber& self(const char* what) {
  if (g_current == nullptr) throw std::logic_error(std::string("CUDA emulation: ") + what + " outside a kernel");
  return *g_current;
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

}  // namespace detail

using namespace detail;

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
// A warp_op's data: its input is copied in at arrival; the last lane runs compute before releasing.
struct WarpData {
  const void* in = nullptr;
  std::size_t in_bytes = 0, out_bytes = 0;
  WarpCompute compute = nullptr;
  void* ctx = nullptr;
};

// Arrives at a warp collective, waits for every lane of the mask, returns the parity slot used.
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
