// Op schemas of supcon_fast and the CPU registration; CUDA kernels register in cuda/.
// The Python module `_C` is empty: importing it loads this library and runs the registrations
// (the pattern of pytorch/extension-cpp), so the ops work without Python bindings.
//
// CPU calls go to the fused CPU op (cpu/), or, inside a CUDA emulation session (emu/), to the CUDA
// host code and kernels compiled for the CPU: supcon_fast.testing.cuda_emulation() drives the
// session through the emulation_* ops below.
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "emu/emu_runtime.h"
#include "supcon.h"

extern "C" {
// Importing supcon_fast._C is what loads the shared library; it defines no Python functions.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace supcon_fast {
namespace {

FwdOutputs fwd_on_cpu(const at::Tensor& z, const at::Tensor& labels, int64_t offset, int64_t num_anchors,
                      double temperature, bool variant_in, const c10::optional<at::Tensor>& queue,
                      c10::string_view denominator, const c10::optional<at::Tensor>& cap_rank, int64_t cap) {
  const ContrastOptions opt = contrast_options(z, queue, denominator, cap_rank, cap);
  if (supcon_emu::active())
    return cuda_emu::supcon_fwd_cuda(z, labels, offset, num_anchors, temperature, variant_in, opt);
  return supcon_fwd_cpu(z, labels, offset, num_anchors, temperature, variant_in, opt);
}

at::Tensor bwd_on_cpu(const at::Tensor& grad_loss, const at::Tensor& z, const at::Tensor& labels, const at::Tensor& lse,
                      const at::Tensor& pos_term, const at::Tensor& npos, int64_t offset, int64_t num_anchors,
                      double temperature, bool variant_in, const c10::optional<at::Tensor>& queue,
                      c10::string_view denominator, const c10::optional<at::Tensor>& cap_rank, int64_t cap,
                      const c10::optional<at::Tensor>& coef) {
  const ContrastOptions opt = contrast_options(z, queue, denominator, cap_rank, cap);
  const at::Tensor c = coef.has_value() ? *coef : at::Tensor();
  if (supcon_emu::active())
    return cuda_emu::supcon_bwd_cuda(grad_loss, z, labels, lse, pos_term, npos, offset, num_anchors, temperature,
                                     variant_in, opt, c);
  return supcon_bwd_cpu(grad_loss, z, labels, lse, pos_term, npos, offset, num_anchors, temperature, variant_in, opt, c);
}

void emulation_start(const std::string& schedule, int64_t seed, int64_t poison, const std::string& arch,
                     int64_t sm_count) {
  supcon_emu::Config c;
  if (schedule == "ascending") c.schedule = supcon_emu::Schedule::ascending;
  else if (schedule == "descending") c.schedule = supcon_emu::Schedule::descending;
  else if (schedule == "shuffled") c.schedule = supcon_emu::Schedule::shuffled;
  else TORCH_CHECK_VALUE(false, "schedule must be 'ascending', 'descending' or 'shuffled', got '", schedule, "'");
  TORCH_CHECK_VALUE(seed >= 0, "seed must be >= 0, got ", seed);
  c.seed = static_cast<uint64_t>(seed);
  c.poison = static_cast<int>(poison);
  c.arch = arch;
  c.sm_count = static_cast<int>(sm_count);
  try {
    supcon_emu::start(c);
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, e.what());
  }
}

// The GPUs the emulation can plan for, as JSON: [{"name", "example", "sms", "smem_optin"}, ...].
std::string emulation_archs() {
  std::string out = "[";
  for (const auto& a : supcon_emu::known_archs())
    out += std::string(out.size() > 1 ? ", " : "") + "{\"name\": \"" + a.name + "\", \"example\": \"" + a.example +
           "\", \"sms\": " + std::to_string(a.sms) + ", \"smem_optin\": " + std::to_string(a.smem_optin) + "}";
  return out + "]";
}

// Ends the session; returns its kernel launches as JSON.
std::string emulation_stop() { return supcon_emu::launches_json(supcon_emu::stop()); }

#define SUPCON_STRINGIFY2(x) #x
#define SUPCON_STRINGIFY(x) SUPCON_STRINGIFY2(x)
// The archs the CUDA kernels were built for, as setup.py's token ("sm80_sm90ptx_..."), "" without CUDA.
std::string cuda_archs() {
#ifdef SUPCON_CUDA_ARCHS
  return SUPCON_STRINGIFY(SUPCON_CUDA_ARCHS);
#else
  return "";
#endif
}

}  // namespace
}  // namespace supcon_fast

TORCH_LIBRARY(supcon_fast, m) {
  m.def(
      "supcon_fwd(Tensor z, Tensor labels, int offset, int num_anchors, float temperature, "
      "bool variant_in, Tensor? queue=None, str denominator='all', Tensor? cap_rank=None, int cap=-1) "
      "-> (Tensor loss, Tensor lse, Tensor pos_term, Tensor npos, Tensor coef)");
  m.def(
      "supcon_bwd(Tensor grad_loss, Tensor z, Tensor labels, Tensor lse, Tensor pos_term, "
      "Tensor npos, int offset, int num_anchors, float temperature, bool variant_in, Tensor? queue=None, "
      "str denominator='all', Tensor? cap_rank=None, int cap=-1, Tensor? coef=None) -> Tensor");
  m.def("emulation_start(str schedule, int seed, int poison, str arch, int sm_count) -> ()", &supcon_fast::emulation_start);
  m.def("emulation_stop() -> str", &supcon_fast::emulation_stop);
  m.def("emulation_archs() -> str", &supcon_fast::emulation_archs);
  m.def("cuda_archs() -> str", &supcon_fast::cuda_archs);
  m.def("cuda_plan(str kernel, int N, int M, int offset, int D, ScalarType dtype, str arch, int grad_rows=-1) -> Tensor",
        &supcon_fast::cuda_emu::plan_blocks);
}

TORCH_LIBRARY_IMPL(supcon_fast, CPU, m) {
  m.impl("supcon_fwd", &supcon_fast::fwd_on_cpu);
  m.impl("supcon_bwd", &supcon_fast::bwd_on_cpu);
}
