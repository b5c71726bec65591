"""Fixtures for every test: the CUDA emulation around tests marked ``emulated`` (helpers: helpers.py)."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _cuda_emulation(request):
    """Tests (or parameters) marked ``emulated`` run inside supcon_fast.testing.cuda_emulation(), unless
    they open their own sessions (test_ops_cuda.py's ``be`` fixture)."""
    if request.node.get_closest_marker("emulated") is None or "be" in request.fixturenames:
        yield
        return
    from supcon_fast.testing import cuda_emulation
    with cuda_emulation():
        yield
