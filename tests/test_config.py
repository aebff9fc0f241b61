"""Config errors are one line naming the file, the key and what was expected."""

import subprocess
import sys

import pytest

from medfm.cli import main
from medfm.cohort import CohortConfig
from medfm.config import load_config
from medfm.errors import ConfigError
from medfm.models import load_model_config
from medfm.train import TrainConfig

from .conftest import REPO


def write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_misspelt_key_names_file_key_and_suggestion(tmp_path):
    path = write(tmp_path, "epochs: 3\nbatch_sise: 8\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, TrainConfig)
    message = str(err.value)
    assert str(path) in message and "batch_sise" in message
    assert "did you mean 'batch_size'" in message
    assert "\n" not in message


def test_wrong_type_names_key_and_value(tmp_path):
    path = write(tmp_path, "epochs: many\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, TrainConfig)
    assert err.value.key == "epochs"
    assert "integer" in err.value.reason and "'many'" in err.value.reason


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.yaml", TrainConfig)


def test_invalid_yaml_gives_line(tmp_path):
    path = write(tmp_path, "epochs: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path, TrainConfig)


def test_nested_encoder_key_is_named_with_its_path(tmp_path):
    text = (REPO / "configs/models/tiny.yaml").read_text().replace("patch_size: 8", "patch_sixe: 8")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_model_config(path)
    assert err.value.key == "encoders.cxr.patch_sixe"
    assert "did you mean 'patch_size'" in str(err.value)


def test_unknown_encoder_name(tmp_path):
    text = (REPO / "configs/models/tiny.yaml").read_text().replace("name: vit2d", "name: vit9d")
    with pytest.raises(ConfigError, match="unknown encoder 'vit9d'"):
        load_model_config(write(tmp_path, text))


def test_unknown_modality_key(tmp_path):
    path = write(tmp_path, "name: x\nmanifest: m.csv\nmodalities: {xray: cxr_path}\nlabels: []\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, CohortConfig)
    assert err.value.key.startswith("modalities.xray")


def test_split_fractions_must_sum_to_one(tmp_path):
    path = write(tmp_path, "name: x\nmanifest: m.csv\nmodalities: {cxr: p}\nlabels: []\n"
                           "split: {fractions: {train: 0.5, test: 0.2}}\n")
    with pytest.raises(ConfigError, match="sum to 1"):
        load_config(path, CohortConfig)


def test_every_shipped_config_validates():
    for path in sorted((REPO / "configs/models").glob("*.yaml")):
        load_model_config(path)
    for path in sorted((REPO / "configs/train").glob("*.yaml")):
        load_config(path, TrainConfig)


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    pipeline = write(tmp_path, "name: x\noutput_dir: out\ncohort: c.yaml\nmodel: m.yaml\ntrain: t.yaml\n"
                               "plan: p.yaml\nstagez: []\n", name="pipe.yaml")
    assert main(["run", str(pipeline)]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert str(pipeline) in err.replace("\n", "") and "stagez" in err


def test_cli_error_in_a_real_process_has_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "medfm.cli", "run", str(tmp_path / "nope.yaml")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "file not found" in result.stderr
