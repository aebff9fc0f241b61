"""Tokens: the tokens file, matching in constant time against every token, and secrets that never reach a log."""

from __future__ import annotations

import logging
import secrets
import threading
import time

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from medfm.cli import main
from medfm.errors import ConfigError, MedfmError
from medfm.service import ServiceSettings, create_app, serve
from medfm.service import tokens as tokens_module
from medfm.service.security import uvicorn_log_config
from medfm.service.tokens import AccessToken, TokenMatcher, load_tokens, new_token, token_sha256
from tests.service.conftest import SCOPED, bearer, scoped_tokens
from tests.service.test_page import free_port

DIGEST = token_sha256("s3cret-value")


def tokens_file(tmp_path, body: str):
    path = tmp_path / "tokens.yaml"
    path.write_text(body)
    return path


def test_a_tokens_file_names_each_token_its_digest_and_cohorts(tmp_path):
    path = tokens_file(tmp_path, f"tokens:\n  - name: radiology\n    sha256: {DIGEST}\n    cohorts: [demo, second]\n"
                                 f"  - name: research\n    sha256: {token_sha256('other')}\n    cohorts: all\n")
    radiology, research = load_tokens(path)
    assert radiology.caller().cohorts == {"demo", "second"} and research.caller().cohorts is None
    assert TokenMatcher([radiology, research]).match("s3cret-value").name == "radiology"


@pytest.mark.parametrize(("entry", "words"), [
    ("    sha256: s3cret-value\n    cohorts: all", "never the secret itself"),
    (f"    sha256: {DIGEST.upper()}\n    cohorts: all", "never the secret itself"),
    ("    token: s3cret-value\n    cohorts: all", "unknown key"),
    (f"    sha256: {DIGEST}\n    cohorts: []", "a list of cohort names or `all`"),
    (f"    sha256: {DIGEST}\n    cohorts: everyone", "a list of cohort names or `all`"),
    (f"    sha256: {DIGEST}", "cohorts: required key is missing"),
])
def test_a_malformed_token_is_refused_naming_the_key_and_never_echoing_a_secret(tmp_path, entry, words):
    path = tokens_file(tmp_path, f"tokens:\n  - name: radiology\n{entry}\n")
    with pytest.raises(ConfigError, match="tokens.0") as caught:
        load_tokens(path)
    assert words in str(caught.value) and "s3cret-value" not in str(caught.value)


def test_token_names_and_digests_are_unique(tmp_path):
    twice = f"  - name: a\n    sha256: {DIGEST}\n    cohorts: all\n"
    with pytest.raises(ConfigError, match="share a name: a"):
        load_tokens(tokens_file(tmp_path, "tokens:\n" + twice + twice))
    with pytest.raises(ConfigError, match="share a sha256") as caught:
        load_tokens(tokens_file(tmp_path, "tokens:\n" + twice + twice.replace("name: a", "name: b")))
    assert DIGEST not in str(caught.value)


def test_every_token_is_compared_whichever_matches(monkeypatch):
    compared = []
    real = tokens_module.secrets.compare_digest
    monkeypatch.setattr(tokens_module.secrets, "compare_digest", lambda a, b: compared.append(b) or real(a, b))
    matcher = TokenMatcher(scoped_tokens())
    for name, (secret, _) in SCOPED.items():
        compared.clear()
        assert matcher.match(secret).name == name
        assert len(compared) == len(SCOPED)  # no early exit on the match
    compared.clear()
    assert matcher.match("nobody") is None and len(compared) == len(SCOPED)


def test_new_tokens_are_random_and_come_with_their_digest():
    (one, digest), (two, _) = new_token(), new_token()
    assert one != two and len(one) >= 32 and digest == token_sha256(one)


def test_one_token_or_a_tokens_file_not_both(indexed_cohort, monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="not both"):
        ServiceSettings(token="x", tokens=scoped_tokens())
    with pytest.raises(MedfmError, match="not both"):
        serve(indexed_cohort.index, token="x", tokens=scoped_tokens())
    path = tokens_file(tmp_path, f"tokens:\n  - name: a\n    sha256: {DIGEST}\n    cohorts: all\n")
    monkeypatch.setenv("MEDFM_TOKEN", "from-the-environment")
    assert main(["serve", "--index", str(indexed_cohort.index), "--tokens", str(path)]) == 2


def test_serve_refuses_other_hosts_without_any_token(indexed_cohort):
    with pytest.raises(MedfmError, match="without an access token"):
        serve(indexed_cohort.index, host="0.0.0.0", tokens=[])


def test_the_single_token_is_named_default_and_sees_everything(case_search):
    with TestClient(create_app(case_search, ServiceSettings(token="only-one")),
                    headers={"Authorization": "Bearer only-one"}) as client:
        assert client.get("/api/version").json()["cases"] == len(case_search.index)
    assert ServiceSettings(token="only-one").access_tokens()[0].name == "default"
    assert "only-one" not in repr(ServiceSettings(token="only-one"))


def test_no_secret_reaches_a_log_a_response_or_an_error_in_process(two_cohorts_search, caplog):
    caplog.set_level(logging.DEBUG)
    texts = []
    with TestClient(create_app(two_cohorts_search, ServiceSettings(tokens=scoped_tokens()))) as client:
        for name in SCOPED:
            texts += [client.get("/api/version", headers=bearer(name)).text,
                      client.post("/api/search", data={"text": "effusion", "k": "2"}, headers=bearer(name)).text]
        for secret, _ in SCOPED.values():
            texts += [client.get("/api/version", headers={"Authorization": f"Bearer {secret}x"}).text,
                      client.get(f"/api/version?token={secret}").text]
    # The test client logs the URLs it requests (query strings and all): the server's side is what counts here.
    server_side = "\n".join(caplog.handler.format(r) for r in caplog.records if not r.name.startswith("httpx"))
    for secret, _ in SCOPED.values():
        assert secret not in server_side and not any(secret in text for text in texts)


def test_no_secret_reaches_uvicorn_logs(two_cohorts_search):
    """The app under uvicorn with ``serve``'s log config; every record of every logger is captured."""
    captured: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(self.format(record))

    port = free_port()
    app = create_app(two_cohorts_search, ServiceSettings(tokens=scoped_tokens()))
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=uvicorn_log_config(), log_level="debug")
    server = uvicorn.Server(config)
    handler = Capture()
    watched = [logging.getLogger(name) for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access")]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    for logger in watched:  # after uvicorn configured logging, which replaces handlers
        logger.addHandler(handler)
    try:
        url = f"http://127.0.0.1:{port}"
        for secret, _ in SCOPED.values():
            httpx.get(f"{url}/api/version", headers={"Authorization": f"Bearer {secret}"})
            httpx.get(f"{url}/api/version?token={secret}&access_token={secret}")
            httpx.post(f"{url}/api/search", data={"text": "effusion"}, headers={"Authorization": f"Bearer {secret}"})
        wrong = secrets.token_urlsafe(12)
        httpx.get(f"{url}/api/version", headers={"Authorization": f"Bearer {wrong}"})
    finally:
        for logger in watched:
            logger.removeHandler(handler)
        server.should_exit = True
        thread.join(timeout=20)
    assert any("/api/version" in line for line in captured)  # the access log was captured
    for secret in [s for s, _ in SCOPED.values()] + [wrong]:
        assert not any(secret in line for line in captured), secret


def test_access_token_cohorts_all_is_not_a_cohort_named_all():
    token = AccessToken(name="a", sha256=DIGEST, cohorts="all")
    assert token.caller().may_see("anything") and token.caller().may_see(None)
    scoped = AccessToken(name="b", sha256=DIGEST, cohorts=["demo"]).caller()
    assert scoped.may_see("demo") and not scoped.may_see("other") and not scoped.may_see(None)
