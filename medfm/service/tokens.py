"""Access tokens: who may call the service, under which name, and which cohorts each may see.

A tokens file (``medfm serve --tokens tokens.yaml``) lists each token by its name, the
SHA-256 of its secret and its cohorts::

    tokens:
      - name: radiology-site-a          # what the audit log records; never the secret
        sha256: 9f86d081884c7d65...     # sha256 of the secret, 64 hex digits
        cohorts: [site_a_2024]          # or: all
      - name: research
        sha256: 60303ae22b998861...
        cohorts: all

The file holds digests, not secrets, so a backup, a config repository or a colleague
reading it over a shoulder learns nothing that opens the service. A plain SHA-256 suffices
(no salt, no slow hash): the secrets are random (``medfm.service.tokens.new_token``, 192
bits), not passwords a dictionary could guess. ``MEDFM_TOKEN`` or ``--token-file`` still
configure one token, named ``default``, that sees every cohort.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from medfm.config import Config, read_yaml, validate_config
from medfm.errors import ConfigError

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
DEFAULT_NAME = "default"
ANONYMOUS = "anonymous"  # the caller's name when the service runs without tokens (loopback only)


class AccessToken(Config):
    """One token of a tokens file.

    Attributes:
        name: what the audit log records for requests with this token.
        sha256: the SHA-256 of the secret, as 64 lowercase hex digits.
        cohorts: the cohorts whose cases it may see, or ``all``.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
    sha256: str = Field(pattern=_SHA256.pattern)
    cohorts: Literal["all"] | list[str]

    @field_validator("cohorts", mode="before")
    @classmethod
    def _cohorts(cls, value: object) -> object:
        names_a_list = isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value)
        if value != "all" and not names_a_list:
            raise ValueError("expected a list of cohort names or `all`")
        return value

    def caller(self) -> Caller:
        return Caller(self.name, None if self.cohorts == "all" else frozenset(self.cohorts))


class TokenFile(Config):
    """A tokens file: at least one token; names and digests unique."""

    tokens: list[AccessToken] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> TokenFile:
        for field in ("name", "sha256"):
            values = [getattr(token, field) for token in self.tokens]
            repeated = sorted({v for v in values if values.count(v) > 1})
            if repeated:
                shown = ", ".join(repeated) if field == "name" else f"{len(repeated)} digest(s)"
                raise ValueError(f"two tokens share a {field}: {shown}")
        return self


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the token's name and the cohorts it may see (None: every cohort)."""

    name: str
    cohorts: frozenset[str] | None

    def may_see(self, cohort: str | None) -> bool:
        return self.cohorts is None or cohort in self.cohorts


def load_tokens(path: str | Path) -> list[AccessToken]:
    """The tokens of a tokens file.

    Raises:
        ConfigError: the file is missing or a token is malformed (the message names the file and key).
    """
    data = read_yaml(path)
    entries = data.get("tokens")
    for number, entry in enumerate(entries if isinstance(entries, list) else []):
        if not isinstance(entry, dict):
            continue
        unknown = sorted(set(entry) - set(AccessToken.model_fields))
        if unknown:
            raise ConfigError(path, f"tokens.{number}.{unknown[0]}", "unknown key; expected one of: "
                              f"{', '.join(AccessToken.model_fields)} (the file holds each secret's SHA-256, never "
                              "the secret)")
        digest = entry.get("sha256")
        if digest is not None and not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
            # Said without the value: a secret pasted here by mistake must not reach a terminal or a log.
            raise ConfigError(path, f"tokens.{number}.sha256", "expected the SHA-256 of the secret (64 lowercase hex "
                              "digits), never the secret itself: printf %s \"$SECRET\" | sha256sum")
    return validate_config(data, TokenFile, path).tokens


def default_token(secret: str) -> AccessToken:
    """The one token of ``MEDFM_TOKEN`` / ``--token-file``: named ``default``, seeing every cohort."""
    return AccessToken(name=DEFAULT_NAME, sha256=token_sha256(secret), cohorts="all")


def token_sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token() -> tuple[str, str]:
    """A fresh random secret and its SHA-256 (the line for a tokens file)."""
    secret = secrets.token_urlsafe(24)
    return secret, token_sha256(secret)


class TokenMatcher:
    """Finds the token a presented secret belongs to, in time that does not depend on which one or how close.

    The presented secret is hashed and its digest compared with every configured digest by
    ``secrets.compare_digest``, always all of them (no early exit on a match): the time
    taken says neither which token matched nor how much of a guess was right.
    """

    def __init__(self, tokens: list[AccessToken]):
        self._digests = [(bytes.fromhex(token.sha256), token.caller()) for token in tokens]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def match(self, secret: str) -> Caller | None:
        given = hashlib.sha256(secret.encode()).digest()
        found = None
        for digest, caller in self._digests:
            equal = secrets.compare_digest(given, digest)
            found = caller if equal else found
        return found
