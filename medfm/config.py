"""YAML configs validated by pydantic, with one-line errors.

Every config file in medfm (cohort, model, training, prompt set, plan,
pipeline) is a subclass of :class:`Config` loaded by :func:`load_config`.
A wrong key, a wrong type, a missing required key, a key written twice or a
missing file becomes a :class:`ConfigError` whose message is one line,
``<file>: <key>: <what was expected>``, never a traceback.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from medfm.errors import ConfigError

C = TypeVar("C", bound="Config")


class Config(BaseModel):
    """Base of all medfm configs: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class _RepeatedKey(yaml.constructor.ConstructorError):
    """A key written twice in one YAML mapping."""

    def __init__(self, key: Any, first: int, again: yaml.Mark):
        super().__init__(None, None, f"key {key!r} appears twice in one mapping (first on line {first})", again)


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key written twice in one mapping.

    PyYAML keeps the last value silently, so a second ``lr:`` further down a file would
    override the first without a word.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden by later keys
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool):  # unhashable keys: the base class reports them
                continue
            if key in first_line:
                raise _RepeatedKey(key, first_line[key], key_node.start_mark)
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, or raise ConfigError naming the file.

    Raises:
        ConfigError: the file is missing, not UTF-8, not valid YAML, repeats a key within
            one mapping, or is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(path, None, "file not found")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # a SafeLoader
    except UnicodeDecodeError as err:
        raise ConfigError(path, None, f"not UTF-8 text (byte {err.start})") from None
    except _RepeatedKey as err:
        raise ConfigError(path, f"line {err.problem_mark.line + 1}", err.problem) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else None
        raise ConfigError(path, where, f"not valid YAML ({_one_line(getattr(err, 'problem', None) or err)})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path, None, f"expected a mapping of keys, got {type(data).__name__}")
    return data


def load_config(path: str | Path, cls: type[C], **overrides: Any) -> C:
    """Load ``path`` as a ``cls`` config; ``overrides`` replace top-level keys."""
    path = Path(path)
    data = {**read_yaml(path), **overrides}
    return validate_config(data, cls, path)


def validate_config(data: dict[str, Any], cls: type[C], path: str | Path | None = None) -> C:
    """Validate a mapping as ``cls``; the first problem becomes a one-line ConfigError."""
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise _to_config_error(err, cls, path) from None


def resolve_path(config_file: str | Path, key: str, value: str | Path, must_exist: bool = True) -> Path:
    """Resolve a path written in a config relative to the config's own folder."""
    candidate = Path(value).expanduser()
    if not candidate.is_absolute():
        # normpath: error messages and provenance show configs/x.yaml, not pipelines/../configs/x.yaml
        candidate = Path(os.path.normpath(Path(config_file).parent / candidate))
    if must_exist and not candidate.exists():
        raise ConfigError(config_file, key, f"file not found: {value}")
    return candidate


def _to_config_error(err: ValidationError, cls: type[Config], path: str | Path | None) -> ConfigError:
    first = err.errors(include_url=False)[0]
    loc = [str(part) for part in first["loc"]]
    key = ".".join(loc) or None
    if first["type"] == "extra_forbidden":
        allowed = _allowed_keys(cls, first["loc"][:-1])
        guess = difflib.get_close_matches(loc[-1], allowed, n=1)
        hint = f"; did you mean {guess[0]!r}?" if guess else ""
        reason = f"unknown key; expected one of: {', '.join(allowed)}{hint}"
    elif first["type"] == "missing":
        reason = "required key is missing"
    else:
        got = first.get("input")
        reason = f"{first['msg'][0].lower()}{first['msg'][1:]}"
        if not isinstance(got, dict | list):  # a whole block's value would be noise
            reason += f" (got {got!r})"
    return ConfigError(path, key, _one_line(reason))


def _one_line(text: object) -> str:
    """A message on one line: a validator's multi-line text joined with '; '."""
    return "; ".join(line.strip() for line in str(text).strip().splitlines() if line.strip())


def _allowed_keys(cls: type[Config], loc: tuple) -> list[str]:
    """Walk the model's fields along ``loc`` to list the keys allowed there."""
    model: Any = cls
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = getattr(model, "model_fields", {}).get(part)
        model = _nested_model(field.annotation) if field is not None else None
    return sorted(getattr(model, "model_fields", {}) or [])


def _nested_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _nested_model(arg)
        if found is not None:
            return found
    return None
