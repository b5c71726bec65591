"""Builds supcon_fast._C: the CPU kernels always, the CUDA kernels when a CUDA toolkit is found.

Toolkit: CUDA_HOME, else /usr/local/cuda if it has include/cuda_runtime.h (an nvcc on PATH alone
can point at the wrong folder). Arch list: TORCH_CUDA_ARCH_LIST, else the visible GPUs', else
8.0;9.0+PTX;10.0;12.0: SASS for sm_80 (which sm_86 / sm_87 / sm_89 also run), sm_90, sm_100 and
sm_120, plus compute_90 PTX that newer GPUs compile at load. SUPCON_FORCE_CPU=1 skips CUDA.
MAX_JOBS is respected (ninja).
"""
import glob
import os
import sys
import sysconfig

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "8.0;9.0+PTX;10.0;12.0"


def arch_tag(arch_list):
    """'8.0;9.0+PTX' -> 'sm80_sm90ptx': the embedded archs as one preprocessor token (no ';' or quotes
    to survive ninja's shell), reported by the cuda_archs op and checked against the binary by a test."""
    parts = []
    for a in arch_list.replace(" ", ";").split(";"):
        if a:
            ptx = a.endswith("+PTX")
            parts.append("sm" + a.removesuffix("+PTX").replace(".", "") + ("ptx" if ptx else ""))
    return "_".join(parts)


def describe_archs(arch_list):
    """'8.0;9.0+PTX' -> 'SASS sm_80, sm_90 + PTX compute_90'."""
    tags = arch_tag(arch_list).split("_")
    sass = ", ".join("sm_" + t[2:].removesuffix("ptx") for t in tags)
    ptx = ", ".join("compute_" + t[2:].removesuffix("ptx") for t in tags if t.endswith("ptx"))
    return f"SASS {sass}" + (f" + PTX {ptx}" if ptx else "")


def find_cuda_home():
    if os.environ.get("SUPCON_FORCE_CPU", "0") == "1":
        return None
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if candidate and os.path.exists(os.path.join(candidate, "include", "cuda_runtime.h")):
            return candidate
    return None


cuda_home = find_cuda_home()
if cuda_home:
    # torch.utils.cpp_extension reads CUDA_HOME once, at import: set it first.
    os.environ["CUDA_HOME"] = cuda_home

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

# csrc/emu: the CUDA kernels compiled for the CPU emulation (supcon_fast.testing.cuda_emulation), in
# every build, with or without a toolkit.
sources = [os.path.relpath(p, ROOT) for p in
           sorted(glob.glob(os.path.join(ROOT, "csrc", "*.cpp")) + glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp"))
                  + glob.glob(os.path.join(ROOT, "csrc", "emu", "*.cpp")))]
cuda_sources = [os.path.relpath(p, ROOT) for p in sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))]
# The C++ standard is torch's (C++20 for 2.14, C++17 for older).
# -fno-strict-aliasing: the emulated kernels move 16-bit words through uint4 / __half views of one buffer;
# -Wno-unknown-pragmas: their '#pragma unroll' is nvcc's (GCC cannot silence it from inside the header).
# nvcc --threads 0: the archs of the one CUDA translation unit compile in parallel (one thread per CPU).
cxx_flags = ["-O3", "-fno-math-errno", "-fopenmp-simd", "-fno-strict-aliasing", "-Wno-unknown-pragmas"]


def cpu_has_fma():
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " fma " in line + " " for line in f)
    except OSError:
        return False


if cpu_has_fma():  # only the emulated kernels' translation unit uses it (csrc/emu/supcon_emu.cpp)
    cxx_flags.append("-DSUPCON_EMU_FMA")

if cuda_home:
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        if torch.cuda.is_available():
            caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
            os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(f"{a}.{b}" for a, b in caps)
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCHS
    ext = CUDAExtension(
        "supcon_fast._C", sources + cuda_sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx_flags + ["-DSUPCON_WITH_CUDA",
                                                f"-DSUPCON_CUDA_ARCHS={arch_tag(os.environ['TORCH_CUDA_ARCH_LIST'])}"],
                            "nvcc": ["-O3", "-lineinfo", "-DSUPCON_WITH_CUDA", "--threads", "0"]},
    )
else:
    ext = CppExtension("supcon_fast._C", sources, include_dirs=[os.path.join(ROOT, "csrc")],
                       extra_compile_args={"cxx": cxx_flags})

print(
    "supcon_fast build: "
    f"torch {torch.__version__} (CUDA {torch.version.cuda}), "
    f"CUDA kernels {'ON' if cuda_home else 'OFF'}"
    + (f" [toolkit {cuda_home}, archs {os.environ['TORCH_CUDA_ARCH_LIST']}: "
       f"{describe_archs(os.environ['TORCH_CUDA_ARCH_LIST'])}; {len(cuda_sources)} .cu files]" if cuda_home
       else (" [SUPCON_FORCE_CPU=1]" if os.environ.get("SUPCON_FORCE_CPU") == "1" else " [no CUDA toolkit found]"))
    + f", MAX_JOBS={os.environ.get('MAX_JOBS', 'auto')}",
    file=sys.stderr,
)

class BuildExt(BuildExtension.with_options(use_ninja=True)):
    """One object folder for every kind of build. setuptools' editable install (tools/setup_env.sh) would
    compile into a throwaway folder: then a second setup, and the wheel the install test builds, would
    recompile everything (minutes for the CUDA sources). ninja recompiles what changed, flags included.
    An explicit --build-temp still wins."""

    def finalize_options(self):
        explicit = self.build_temp is not None
        super().finalize_options()
        if not explicit:
            self.build_temp = os.path.join(ROOT, "build", f"temp.{sysconfig.get_platform()}-{sys.implementation.cache_tag}")


setup(
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExt},
)
