"""What the build embeds: the CUDA kernels' SASS and PTX, read back from the library with cuobjdump
(the nvidia-cuda-cuobjdump wheel of the test extra), against the arch list the build reports."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from supcon_fast import ops


def cuobjdump() -> str:
    try:
        import nvidia
        for root in nvidia.__path__:
            for exe in Path(root).glob("cu*/bin/cuobjdump"):
                return str(exe)
    except ImportError:
        pass
    found = shutil.which("cuobjdump")
    if found is None:
        pytest.fail("cuobjdump not found: install the test extra (nvidia-cuda-cuobjdump)")
    return found


@pytest.mark.skipif(not ops.has_kernel("cuda"), reason="built without CUDA kernels (no toolkit)")
def test_library_embeds_the_reported_sass_and_ptx():
    import supcon_fast._C as lib
    archs = ops.cuda_archs()
    assert archs["sass"], "a CUDA build reports its archs"
    out = subprocess.run([cuobjdump(), "--list-elf", "--list-ptx", lib.__file__], capture_output=True, text=True,
                         check=True).stdout
    elf = {f"sm_{m}" for m in re.findall(r"ELF file\s+\d+:.*\.sm_(\d+)\w*\.cubin", out)}
    ptx = {f"compute_{m}" for m in re.findall(r"PTX file\s+\d+:.*\.sm_(\d+)\w*\.ptx", out)}
    assert elf == set(archs["sass"]), out
    assert ptx == set(archs["ptx"]), out


def test_default_arch_list_covers_current_gpus():
    """Without TORCH_CUDA_ARCH_LIST and without a visible GPU: SASS for sm_80 (run by sm_86 / sm_87 /
    sm_89 too), sm_90, sm_100, sm_120, and compute_90 PTX for anything newer."""
    src = (Path(__file__).resolve().parents[1] / "setup.py").read_text()
    namespace: dict = {}
    exec(src[src.index("DEFAULT_ARCHS"):src.index("def find_cuda_home")], namespace)
    assert namespace["describe_archs"](namespace["DEFAULT_ARCHS"]) == \
        "SASS sm_80, sm_90, sm_100, sm_120 + PTX compute_90"
