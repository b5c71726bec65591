"""supcon_fast/configs/fashion_mnist{,_cpu}.yaml: they load and validate through the config module, train 2 steps
on a tiny dataset made by the Fashion-MNIST maker from IDX files written here, and resume with
--resume auto. Only sizes are overridden (width, batch), so the rest of each recipe is what runs."""
import warnings

import pytest
import yaml

from supcon_fast.data import make_fashion_mnist
from supcon_fast.engine import config
from supcon_fast.engine.run import run
from data_fixtures import write_fashion_source

PRESETS = ("fashion_mnist", "fashion_mnist_cpu")
# what makes them a 28 px greyscale recipe; the values themselves are argued in the YAML comments
RECIPE = {"size": 28, "stem": "small", "arch": "resnet18", "loss": "supcon", "policy": "simclr",
          "crop_min_scale": 0.2, "temperature": 0.1, "lr": 0.125, "views": 2, "linear_holdout": 0.1}
SMALL = ["--width", "4", "--batch-size", "8", "--eval-batch-size", "16", "--linear-epochs", "1",
         "--num-threads", "1", "--no-tensorboard", "--log-every", "1"]


@pytest.fixture(scope="module")
def tiny_fmnist(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fmnist")
    write_fashion_source(tmp / "src")
    return make_fashion_mnist(tmp / "data", source=tmp / "src")


@pytest.mark.parametrize("name", PRESETS)
def test_preset_validates(name):
    raw = config.load_yaml(name)
    assert set(raw) <= set(config.OPTIONS)                 # no stray keys (validate would name them)
    cfg = config.resolve(["--config", name])
    assert {k: cfg[k] for k in RECIPE} == RECIPE
    assert cfg["data"] == "data/fashion_mnist" and cfg["dataset"] == "folder"


def test_cpu_preset_is_the_gpu_recipe_scaled_down():
    gpu, cpu = config.resolve(["--config", PRESETS[0]]), config.resolve(["--config", PRESETS[1]])
    assert cpu["width"] < gpu["width"] and cpu["epochs"] < gpu["epochs"]
    assert cpu["threads"] == 1     # two torch threads on 2 shared cores ran 5x slower (see the YAML)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_trains_two_steps(tiny_fmnist, tmp_path, name):
    out = tmp_path / name
    cfg = config.resolve(["--config", name, "--data", tiny_fmnist, "--out", str(out), "--max-steps", "2", *SMALL])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # torchvision fallback where DALI is missing
        res = run(cfg)
    assert res["status"] == "done" and res["steps"] == 2
    assert (res["train_images"], res["val_images"]) == (30, 20)
    assert 0 <= res["linear_top1"] <= 100
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert {k: saved[k] for k in RECIPE} == RECIPE


def test_cpu_preset_resumes_with_resume_auto(tiny_fmnist, tmp_path, capsys):
    argv = ["--config", PRESETS[1], "--data", tiny_fmnist, "--out", str(tmp_path / "r"), "--resume", "auto", *SMALL]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = run(config.resolve(argv + ["--max-steps", "1"]))
        again = run(config.resolve(argv + ["--max-steps", "2"]))
    assert first["steps"] == 1 and again["status"] == "done" and again["steps"] == 2
    assert f"resumed from {tmp_path / 'r' / 'last.pt'}" in capsys.readouterr().err
