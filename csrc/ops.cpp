// Op schemas of supcon_fast; kernels register per backend in cpu/ and cuda/.
// The Python module `_C` is empty: importing it loads this library and runs the registrations
// (the pattern of pytorch/extension-cpp), so the ops work without Python bindings.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// Importing supcon_fast._C is what loads the shared library; it defines no Python functions.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(supcon_fast, m) {
  m.def(
      "supcon_fwd(Tensor z, Tensor labels, int offset, int num_anchors, float temperature, "
      "bool variant_in) -> (Tensor loss, Tensor lse, Tensor pos_term, Tensor npos)");
  m.def(
      "supcon_bwd(Tensor grad_loss, Tensor z, Tensor labels, Tensor lse, Tensor pos_term, "
      "Tensor npos, int offset, int num_anchors, float temperature, bool variant_in) -> Tensor");
}
