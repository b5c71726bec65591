"""Building what ``supcon_fast.bench.sass`` reads: a tree's CUDA kernels compiled for sm_90 as
``setup.py`` compiles them, their ptxas report and disassembly (with line records), and a host
program built against the same tree that prints each kernel's shared memory, tile shape and launch
plan. Needs nvcc and nvdisasm (the toolkit's, or the copy a pip wheel ships)."""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess

from ..provenance import ROOT
from .sass_cfg import parse_ptxas, parse_sass


# ---------------------------------------------------------------------------------------------
# Compiling and disassembling a tree
# ---------------------------------------------------------------------------------------------
def cuda_home() -> str | None:
    """As setup.py finds the toolkit: CUDA_HOME, CUDA_PATH, /usr/local/cuda (with cuda_runtime.h)."""
    for c in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if c and os.path.exists(os.path.join(c, "include", "cuda_runtime.h")):
            return c
    return None


def find_tool(name: str) -> str | None:
    """nvcc / nvdisasm: the toolkit's, then PATH, then the copies pip wheels ship (triton, nvidia-*)."""
    home = cuda_home()
    candidates = [os.path.join(home, "bin", name)] if home else []
    candidates.append(shutil.which(name) or "")
    site = os.path.dirname(os.path.dirname(os.path.abspath(__import__("torch").__file__)))
    candidates += [os.path.join(site, "triton", "backends", "nvidia", "bin", name),
                   os.path.join(site, "nvidia", "cu13", "bin", name)]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def setup_nvcc_flags(root: str) -> list[str]:
    """The "nvcc" extra_compile_args of the tree's setup.py (the flags its extension is built with)."""
    with open(os.path.join(root, "setup.py")) as f:
        m = re.search(r'"nvcc":\s*(\[[^\]]*\])', f.read())
    return ast.literal_eval(m.group(1)) if m else ["-O3", "-lineinfo", "-DSUPCON_WITH_CUDA"]


def nvcc_command(root: str, out: str) -> list[str]:
    """setup.py's compile of csrc/cuda/supcon_cuda.cu (see build/*/build.ninja), device code for
    sm_90 only, to a cubin, with ptxas's per-kernel report."""
    import sysconfig
    from torch.utils import cpp_extension
    home = cuda_home() or "/usr/local/cuda"
    includes = [os.path.join(root, "csrc")] + cpp_extension.include_paths() + [os.path.join(home, "include"),
                                                                                sysconfig.get_paths()["include"]]
    # -std=c++20: torch 2.14's standard, which BuildExtension adds; the two defines are its too.
    return ([find_tool("nvcc") or "nvcc"] + [f"-I{p}" for p in includes] + list(cpp_extension.COMMON_NVCC_FLAGS)
            + setup_nvcc_flags(root) + ["-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C",
                                        "-std=c++20", "-gencode=arch=compute_90,code=sm_90", "-Xptxas=-v",
                                        "-cubin", "-o", out, os.path.join(root, "csrc", "cuda", "supcon_cuda.cu")])


def compile_tree(root: str, work: str) -> dict:
    """cubin, ptxas report and disassembly (with line records) of one tree's CUDA kernels."""
    os.makedirs(work, exist_ok=True)
    cubin = os.path.join(work, "supcon_cuda.sm_90.cubin")
    cmd = nvcc_command(root, cubin)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"nvcc failed ({root}):\n{r.stderr[-4000:]}")
    nvdisasm = find_tool("nvdisasm")
    if nvdisasm is None:
        raise RuntimeError("nvdisasm not found (CUDA toolkit, or the triton / nvidia-cuda-nvdisasm wheels)")
    sass = subprocess.run([nvdisasm, "-gi", "-c", cubin], capture_output=True, text=True, check=True).stdout
    with open(os.path.join(work, "supcon_cuda.sm_90.sass"), "w") as f:
        f.write(sass)
    with open(os.path.join(work, "ptxas.txt"), "w") as f:
        f.write(r.stdout + r.stderr)
    return {"command": cmd, "ptxas": parse_ptxas(r.stdout + r.stderr), "sass": parse_sass(sass)}


def extract_rev(rev: str, dest: str) -> str:
    """csrc/ and setup.py of commit `rev` into dest (git archive); returns the full commit id."""
    os.makedirs(dest, exist_ok=True)
    arch = subprocess.run(["git", "archive", rev, "csrc", "setup.py"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", dest], input=arch.stdout, check=True)
    return subprocess.run(["git", "rev-parse", rev], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


# ---------------------------------------------------------------------------------------------
# Which kernel is which: tile shapes and shared memory from a host program built against the tree
# ---------------------------------------------------------------------------------------------
_KERNEL = re.compile(r"supcon_(fwd|bwd)_(mma|tile)_kernelINS0_\d+(MmaFwd|MmaBwd|TcEngine|SimtEngine)I"
                     r"(13__nv_bfloat16|6__half|f|d)Li(\d+)E")
_DTYPES = {"13__nv_bfloat16": ("bf16", "__nv_bfloat16"), "6__half": ("fp16", "__half"), "f": ("fp32", "float"),
           "d": ("fp64", "double")}


def identify(mangled: str) -> dict | None:
    """kind, engine, dtype and the C++ configuration type of a forward / backward kernel."""
    m = _KERNEL.search(mangled)
    if not m or re.match(r"E*Lb1E", mangled[m.end():]):  # not a kernel, or the options version (not modelled)
        return None
    kind, family, cfg, dt, width = m.groups()
    dtype, ctype = _DTYPES[dt]
    ctype_full = f"{cfg}<{ctype}, {width}>"
    engine = {"MmaFwd": "mma", "MmaBwd": "mma", "TcEngine": "wmma", "SimtEngine": "ffma"}[cfg]
    name = f"supcon_{kind}_{family}_kernel<{ctype_full}>"
    smem = f"{ctype_full}::bytes" if family == "mma" else f"SmemLayout<{ctype_full}>::{kind}_bytes"
    return {"kernel": name, "kind": kind, "engine": engine, "dtype": dtype, "ctype": ctype_full, "smem_expr": smem}


def probe_source(kernels: dict[str, dict], n: int, m: int, offset: int, dim: int, sms: int) -> str:
    """A host program that prints, per kernel, its dynamic shared memory and tile shape and the plan's
    column tiles per block for the model's problem (the host's own planning code: supcon_plan.cuh)."""
    lines = ['#include <cstdio>', '#include "cuda/supcon_kernels.cuh"',
             '#if __has_include("cuda/supcon_mma_bwd.cuh")', '#include "cuda/supcon_mma_bwd.cuh"', '#endif',
             "using namespace supcon_fast::cuda;", "namespace plan = supcon_fast::plan;",
             "template <class C> void tiles_fwd() {",
             "  const auto p = plan::plan_fwd(%dLL, %dLL, C::BM, C::BN, %d);" % (m, n, sms),
             "  const long long nct = (%dLL + C::BN - 1) / C::BN;" % n,
             "  for (long long s = 0; s < p.splits; ++s) for (long long rb = 0; rb < p.row_blocks; ++rb) {",
             "    long long e = (s + 1) * p.tiles_per_split; if (e > nct) e = nct;",
             '    printf("%lld,", e - s * p.tiles_per_split); } }',
             "template <class C> void tiles_bwd() {",
             "  const auto p = plan::plan_bwd(%dLL, %dLL, %dLL, %dLL, C::BM, C::BN, %d, sizeof(typename C::st_t));"
             % (n, m, offset, dim, sms),
             "  for (long long b = 0; b < p.blocks; ++b) { const auto it = plan::bwd_item(p, b);",
             '    printf("%lld,", it.tile_end - it.tile_begin); } }',
             "int main() {", '  printf("{");']
    for i, (mangled, k) in enumerate(sorted(kernels.items())):
        td = "DP" if k["engine"] == "mma" else "BK"
        c = k["ctype"]
        lines.append(f'  printf("%s\\"{mangled}\\": {{\\"smem_bytes\\": %d, \\"BM\\": %d, \\"BN\\": %d, '
                     f'\\"NT\\": %d, \\"TD\\": %d, \\"plan\\": [", "{"," if i else ""}", '
                     f'(int)({k["smem_expr"]}), (int){c}::BM, (int){c}::BN, (int){c}::NT, (int){c}::{td});')
        lines.append(f"  tiles_{k['kind']}<{c}>();")
        lines.append('  printf("0]}");')
    lines += ['  printf("}\\n");', "  return 0;", "}"]
    return "\n".join(lines) + "\n"


def run_probe(root: str, work: str, kernels: dict[str, dict], **problem) -> dict:
    src = os.path.join(work, "probe.cu")
    exe = os.path.join(work, "probe")
    with open(src, "w") as f:
        f.write(probe_source(kernels, **problem))
    cmd = [find_tool("nvcc") or "nvcc", "-std=c++20", f"-I{os.path.join(root, 'csrc')}",
           "-gencode=arch=compute_90,code=sm_90", "-o", exe, src]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"probe build failed ({root}):\n{r.stderr[-4000:]}")
    out = json.loads(subprocess.run([exe], capture_output=True, text=True, check=True).stdout)
    for v in out.values():
        v["plan"] = v["plan"][:-1]  # the trailing 0 closes the list
    return out
