"""The CUDA emulation under AddressSanitizer and UBSan: builds tests/cpp/test_emu.cpp with CMake
(into build/emu-sanitize, reused between runs) and runs it with ctest. A sanitized library is
awkward to load into Python, so the sanitized run is a C++ program; see its header for what it checks."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "emu-sanitize"


def tool(name: str) -> str:
    """The venv's copy (the test extra installs cmake) or the one on PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: install the test extra (pip install -e '.[test]') or CMake >= 3.18")
    return found


def run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"


def test_emulated_kernels_under_asan_and_ubsan():
    run([tool("cmake"), "-S", str(ROOT), "-B", str(BUILD), "-DSUPCON_BUILD_MODULE=OFF", "-DSUPCON_EMU_TESTS=ON",
         f"-DPython3_EXECUTABLE={sys.executable}"])
    run([tool("cmake"), "--build", str(BUILD), "-j", str(os.cpu_count() or 1)])
    run([tool("ctest"), "--test-dir", str(BUILD), "--output-on-failure"])
