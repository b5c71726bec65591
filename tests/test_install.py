"""The package installed (not editable) works from any directory: a wheel built from this checkout,
installed into a fresh venv that sees this environment's dependencies but not the checkout, trains a
few steps with `python -m supcon_fast.train` and `supcon-train` from a folder outside the checkout,
with a preset read from the package data."""
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python of a fresh venv with the wheel installed, its bin folder)."""
    tmp = tmp_path_factory.mktemp("install")
    # In-tree build: the extension's objects from the checkout's build are reused where up to date.
    env = {**os.environ, "MAX_JOBS": os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))}
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps",
                        str(ROOT), "-w", str(tmp / "wheel")], capture_output=True, text=True, env=env, timeout=3000)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = (tmp / "wheel").glob("supcon_fast-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # torch, DALI, ... from this environment: a path line, so its editable finder of the checkout is not loaded
    Path(purelib, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                        "--no-index", "--ignore-installed", str(wheel)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return python, venv / "bin"


def run_outside(args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env, timeout=900)


def test_installed_package_is_the_one_imported(installed, tmp_path):
    python, _ = installed
    r = run_outside([str(python), "-c", "import supcon_fast, torch; from supcon_fast import ops, supcon_loss; "
                     "from supcon_fast.engine.config import CONFIG_DIR; "
                     "f = torch.nn.functional.normalize(torch.randn(6, 2, 8), dim=-1); "
                     "print(supcon_fast.__file__, ops.has_kernel('cpu'), float(supcon_loss(f, torch.arange(6) % 3)), "
                     "sorted(p.stem for p in CONFIG_DIR.glob('*.yaml')))"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    path, kernel, loss, presets = r.stdout.split(" ", 3)
    assert not path.startswith(str(ROOT)) and "site-packages" in path
    assert kernel == "True" and float(loss) > 0
    assert "demo" in presets and "fashion_mnist_cpu" in presets


@pytest.mark.parametrize("command", ["module", "script"])
def test_installed_trainer_runs_from_any_folder(installed, tmp_path, command):
    python, bin_dir = installed
    entry = [str(python), "-m", "supcon_fast.train"] if command == "module" else [str(bin_dir / "supcon-train")]
    argv = ["--config", "demo", "--max-steps", "2", "--width", "4", "--batch-size", "16", "--linear-epochs", "1",
            "--knn-every", "0", "--out", "run", "--no-tensorboard"]
    r = run_outside(entry + argv, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["status"] == "done" and summary["steps"] == 2 and summary["linear_top1"] is not None
    assert summary["data_root"] == str(tmp_path / "data" / "digits")    # the default root, in the cwd
    assert (tmp_path / "run" / "config.yaml").exists()
