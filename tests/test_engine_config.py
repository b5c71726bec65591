"""Config: presets load, CLI overrides YAML, the saved config round-trips, bad values name the option."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from supcon_fast.engine import config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("preset", ["demo", "cifar", "imagenet_resnet50", "imagenet_resnet200"])
def test_presets_validate(preset):
    cfg = config.resolve(["--config", preset])
    assert cfg["config"] == preset
    if preset == "imagenet_resnet200":
        assert cfg["arch"] == "resnet200" and cfg["optimizer"] == "lars" and cfg["stem"] == "imagenet"


def test_cli_overrides_yaml_and_defaults():
    cfg = config.resolve(["--arch", "resnet50", "--batch-size", "64", "--no-channels-last", "--lr", "0.3"])
    assert cfg["arch"] == "resnet50" and cfg["batch_size"] == 64 and cfg["lr"] == 0.3
    assert cfg["channels_last"] is False
    assert cfg["width"] == config.load_yaml("demo")["width"]        # from the preset
    assert cfg["momentum"] == config.OPTIONS["momentum"][0]           # from the defaults


def test_saved_config_round_trips(tmp_path):
    cfg = config.resolve(["--epochs", "3", "--temperature", "0.5", "--resume", "auto", "--out", str(tmp_path)])
    path = config.save(cfg, tmp_path)
    again = config.resolve(["--config", str(path)])
    assert {**again, "config": cfg["config"]} == cfg
    assert yaml.safe_load(path.read_text())["temperature"] == 0.5


@pytest.mark.parametrize("argv,match", [
    (["--config", "nope"], "config"),
    (["--batch-size", "0"], "batch_size"),
    (["--temperature", "-1"], "temperature"),
    (["--views", "1"], "views"),
    (["--linear-holdout", "1.5"], "linear_holdout"),
    (["--queue", "-1"], "queue"),
    (["--queue", "64", "--loss", "ce"], "queue: applies to the contrastive losses"),
    (["--queue-momentum", "1"], "queue_momentum"),
    (["--queue-momentum", "-0.5"], "queue_momentum"),
    (["--positives-cap", "3"], "positives_cap: must be -1 \\(no cap\\) or a multiple of views = 2"),
    (["--positives-cap", "-2"], "positives_cap"),
])
def test_bad_values_name_the_option(argv, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        config.resolve(argv)


def test_queue_options():
    cfg = config.resolve([])
    assert (cfg["queue"], cfg["queue_momentum"]) == (0, 0.999)                # off by default
    cfg = config.resolve(["--queue", "4096", "--queue-momentum", "0", "--loss", "simclr"])
    assert (cfg["queue"], cfg["queue_momentum"]) == (4096, 0.0)
    assert config.resolve(["--loss", "ce", "--queue", "0"])["queue"] == 0


def test_loss_options():
    cfg = config.resolve([])
    assert (cfg["denominator"], cfg["positives_cap"]) == ("all", -1)
    cfg = config.resolve(["--denominator", "one_positive", "--positives-cap", "4"])
    assert (cfg["denominator"], cfg["positives_cap"]) == ("one_positive", 4)


def test_bad_yaml_key_and_type(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("batch_sise: 12\n")
    with pytest.raises(ValueError, match="batch_sise"):
        config.resolve(["--config", str(p)])
    p.write_text("epochs: two\n")
    with pytest.raises(ValueError, match="epochs"):
        config.resolve(["--config", str(p)])


def test_loss_dtype_option(tmp_path):
    """--loss-dtype: default auto, explicit values and torch's names (what a run's config.yaml records)
    load; a bad value, or a low-precision dtype for the fp32 cross-entropy loss, names loss_dtype."""
    assert config.resolve([])["loss_dtype"] == "auto"
    assert config.resolve(["--loss-dtype", "bf16"])["loss_dtype"] == "bf16"
    p = tmp_path / "run.yaml"
    p.write_text("loss_dtype: bfloat16\n")
    assert config.resolve(["--config", str(p)])["loss_dtype"] == "bfloat16"
    for bad in ("bf17", "float64"):
        p.write_text(f"loss_dtype: {bad}\n")
        with pytest.raises(ValueError, match="loss_dtype"):
            config.resolve(["--config", str(p)])
    with pytest.raises(ValueError, match="loss_dtype"):
        config.resolve(["--loss", "ce", "--loss-dtype", "bf16"])
    assert config.resolve(["--loss", "ce", "--amp", "bf16"])["loss_dtype"] == "auto"
    for preset in ("demo", "cifar", "imagenet_resnet50", "imagenet_resnet200"):
        assert config.load_yaml(preset)["loss_dtype"] == "auto"


def test_cli_errors_are_clear(tmp_path):
    """The tool exits 2 with a message naming the argument, no traceback (bad choice, missing data)."""
    r = subprocess.run([sys.executable, "tools/train.py", "--arch", "resnet19"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--arch" in r.stderr
    r = subprocess.run([sys.executable, "tools/train.py", "--loss-dtype", "bf17"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--loss-dtype" in r.stderr
    r = subprocess.run([sys.executable, "tools/train.py", "--dataset", "folder", "--data", str(tmp_path / "missing"),
                        "--out", str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "data" in r.stderr and "missing" in r.stderr and "Traceback" not in r.stderr


def test_older_names_still_load(tmp_path):
    """--loader, a saved `loader:` (configs and checkpoints of older runs), --dataset synthetic and the
    backend name 'torchvision' all land on today's `backend`."""
    assert config.resolve(["--loader", "memory"])["backend"] == "memory"
    assert config.resolve(["--dataset", "synthetic"])["backend"] == "synthetic"
    old = tmp_path / "old.yaml"
    old.write_text("loader: memory\nbatch_size: 64\n")
    cfg = config.resolve(["--config", str(old)])
    assert cfg["backend"] == "memory" and "loader" not in cfg
    assert config.resolve(["--config", str(old), "--backend", "dali"])["backend"] == "dali"
    saved = {**config.defaults(), "loader": "auto"}
    del saved["backend"]
    assert config.validate(saved)["backend"] == "auto"
    assert config.validate({**config.defaults(), "backend": "torchvision"})["backend"] == "torch"
