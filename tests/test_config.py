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


COHORT_HEAD = "name: x\nmanifest: m.csv\nmodalities: {cxr: p}\n"


@pytest.mark.parametrize(("text", "schema", "key_and_reason"), [
    ("epochs: many\n", TrainConfig,
     "epochs: input should be a valid integer, unable to parse string as an integer (got 'many')"),
    ("batch_size: 8.5\n", TrainConfig,
     "batch_size: input should be a valid integer, got a number with a fractional part (got 8.5)"),
    (COHORT_HEAD + "labels: finding\n", CohortConfig, "labels: input should be a valid list (got 'finding')"),
    (COHORT_HEAD + "labels: [a]\nsplit: {seed: zero}\n", CohortConfig,
     "split.seed: input should be a valid integer, unable to parse string as an integer (got 'zero')"),
    (COHORT_HEAD, CohortConfig, "labels: required key is missing"),
    ("manifest: m.csv\nmodalities: {cxr: p}\nlabels: []\n", CohortConfig, "name: required key is missing"),
    ("epochs: 3\nbatch_sise: 8\n", TrainConfig, "batch_sise: unknown key; expected one of: "),
    ("epochs: 3\nlr: 0.1\nepochs: 4\n", TrainConfig, "line 3: key 'epochs' appears twice in one mapping "
                                                        "(first on line 1)"),
    ("loss:\n  name: infonce\n  name: siglip\n", TrainConfig, "line 3: key 'name' appears twice in one mapping "
                                                              "(first on line 2)"),
    ("- epochs\n", TrainConfig, "expected a mapping of keys, got list"),
    ("epochs: !!python/object/apply:os.system ['echo ran']\n", TrainConfig,
     "line 1: not valid YAML (could not determine a constructor for the tag "
     "'tag:yaml.org,2002:python/object/apply:os.system')"),
])
def test_each_config_problem_is_one_line_naming_file_and_key(tmp_path, text, schema, key_and_reason):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path, schema)
    message = str(err.value)
    assert message.startswith(f"{path}: {key_and_reason}")
    assert "\n" not in message and "Traceback" not in message


def test_a_config_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"epochs: \xff\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, TrainConfig)
    assert str(err.value) == f"{path}: not UTF-8 text (byte 8)"


def test_yaml_merge_keys_may_be_overridden_without_a_repeated_key_error(tmp_path):
    from medfm.config import read_yaml

    path = write(tmp_path, "base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  x: 3\n")
    assert read_yaml(path)["other"] == {"x": 3, "y": 2}


def test_a_validator_message_on_several_lines_becomes_one(tmp_path):
    from pydantic import field_validator

    from medfm.config import Config, validate_config

    class Twoline(Config):
        value: int

        @field_validator("value")
        @classmethod
        def _refuse(cls, value):
            raise ValueError("first line\nsecond line")

    with pytest.raises(ConfigError) as err:
        validate_config({"value": 1}, Twoline, tmp_path / "c.yaml")
    assert str(err.value) == f"{tmp_path / 'c.yaml'}: value: value error, first line; second line (got 1)"
