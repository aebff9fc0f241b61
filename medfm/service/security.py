"""What stands between the network and the index: access tokens, body limits, response headers, log hygiene.

A token is accepted only in the ``Authorization: Bearer`` header, never in a query
string, so it cannot end up in an access log, a browser history or a ``Referer``; and the
access log is cut to the path (the query string is dropped) in case a client puts it there
anyway. Every response carries a Content-Security-Policy that allows only this origin's
scripts, styles and images (plus ``blob:`` images: the page fetches thumbnails with the
bearer header and shows them as object URLs).
"""

# No `from __future__ import annotations`: FastAPI evaluates the endpoints' annotations, which
# refer to local names (settings, the bearer scheme) that a string annotation could not reach.
import copy
import logging
from typing import Annotated, Any

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medfm.service.tokens import ANONYMOUS, Caller, TokenMatcher

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", b"default-src 'self'; img-src 'self' blob:; object-src 'none'; "
                                 b"base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)
API_PREFIX = "/api/"


def bearer_token_check(tokens: TokenMatcher):
    """A FastAPI dependency that admits a request only with ``Authorization: Bearer <secret>`` of a known token.

    It returns the :class:`~medfm.service.tokens.Caller` (the token's name and cohorts). With
    no tokens configured every request is admitted as ``anonymous``, seeing every cohort
    (``serve`` allows that on loopback only).
    """
    scheme = HTTPBearer(auto_error=False, description="a token given to `medfm serve` (--tokens, --token-file or "
                                                      "MEDFM_TOKEN)")
    anonymous = Caller(ANONYMOUS, None)

    async def check(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(scheme)]) -> Caller:
        if not tokens:
            return anonymous
        caller = tokens.match("" if credentials is None else credentials.credentials)
        if caller is None:
            raise HTTPException(401, "missing or wrong access token", headers={"WWW-Authenticate": "Bearer"})
        return caller

    return Depends(check)


class SecurityHeaders:
    """ASGI middleware: the security headers on every response, and ``no-store`` on API responses."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = list(SECURITY_HEADERS)
        if scope["path"].startswith(API_PREFIX):
            extra.append((b"cache-control", b"no-store"))  # results and thumbnails are patient data

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is refused with 413.

    A declared ``Content-Length`` over the limit is refused before anything is read; a body
    sent without one (chunked) is counted as it arrives and refused once it passes the limit,
    so an upload never fills the disk before the endpoint's own, exact, check on the file.
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _send_413(send, self.max_bytes)
            return
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI passes an HTTPException raised while reading the form through as it is.
                    raise HTTPException(413, f"request body over the limit of {self.max_bytes} bytes")
            return message

        await self.app(scope, counted_receive, send)


async def _send_413(send: Send, max_bytes: int) -> None:
    body = f'{{"detail":"request body over the limit of {max_bytes} bytes"}}'.encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class PathOnlyAccessLog(logging.Filter):
    """Drops the query string from uvicorn's access log lines; headers are never logged by uvicorn."""

    def filter(self, record: logging.LogRecord) -> bool:
        # uvicorn logs: '%s - "%s %s HTTP/%s" %d' % (client, method, path?query, http_version, status)
        if isinstance(record.args, tuple) and len(record.args) == 5:
            args = list(record.args)
            args[2] = str(args[2]).split("?", 1)[0]
            record.args = tuple(args)
        return True


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's default logging, with :class:`PathOnlyAccessLog` on the access log handler."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["path_only"] = {"()": f"{__name__}.PathOnlyAccessLog"}
    config["handlers"]["access"]["filters"] = ["path_only"]
    return config
