"""HTTP to one registry: a urllib3 connection pool with bounded retries and the auth dance.

This is the small extension layer over what oras-py 0.2.43 does (its session/auth flow is not
used as is; each upstream gap is fixed here and named):
- retries with exponential backoff and jitter on connection errors, 429 and 5xx, honouring
  `Retry-After` (oras-py does not retry);
- on 401, parse the challenge and authenticate for the scope this request needs (pull, or
  pull,push, plus the source repository of a mount); a 401 with a token already cached fetches a
  fresh one (oras-py re-sends its cached pull token and refreshes only on 403, so pushes to token
  registries fail);
- errors name the registry's own error text (`errors[].code/message/detail`), so a user sees
  "UNAUTHORIZED: authentication required" or "MANIFEST_UNKNOWN", not a bare status code.

urllib3 directly rather than requests: the start-time gate pulls registries too, and urllib3
imports in about half the time. Redirects are followed with Authorization dropped on a change of
host (urllib3's default), so a blob redirect to a storage backend never sees the registry token.

Bodies must be bytes (or None) so a retry can resend them; streaming uploads are split into
bounded chunks by the caller.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable
from urllib.parse import urlencode

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import MaxRetryError, SSLError

from registry.auth import Challenge, Credentials, describe_sources, parse_challenge
from registry.errors import NotFound, StorageError

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
TIMEOUT = urllib3.Timeout(connect=10, read=60)  # a registry silent for a minute is failing
# urllib3's own retries are off (ours below know which requests are safe to resend); redirects on
ONE_TRY = urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=5, raise_on_status=False)
_LINK = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?')


class Response:
    """What a request returns: status, headers, and the body (read at once, or `raw` to stream)."""

    def __init__(self, raw: urllib3.BaseHTTPResponse, method: str, url: str, headers: dict[str, str], stream: bool):
        self.raw = raw
        self.method, self.url, self.request_headers = method, url, headers
        self.status_code = raw.status
        self.headers = raw.headers
        self.reason = raw.reason or ""
        self._stream = stream
        self._content: bytes | None = None if stream else raw.data

    @property
    def content(self) -> bytes:
        if self._content is None:
            self._content = self.raw.read()
        return self._content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    @property
    def next_link(self) -> str | None:
        """The `Link: <url>; rel="next"` target of a paginated answer, if any."""
        match = _LINK.search(self.headers.get("Link", ""))
        return match.group(1) if match else None

    def close(self) -> None:
        """Give the connection back, or drop it when a streamed body was left unread."""
        if self._stream and self._content is None:
            if self.status_code >= 400:  # keep the (small) error text for messages
                try:
                    self._content = self.raw.read(65536)
                except (Urllib3Error, OSError):
                    self._content = b""
            self.raw.close()
        self.raw.release_conn()


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries: `tries` attempts, delay base*2^n (capped) plus jitter, or Retry-After."""

    tries: int = 5
    base: float = 0.2
    cap: float = 5.0

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        if retry_after:
            try:
                return min(float(retry_after), self.cap * 4)
            except ValueError:
                pass
        return min(self.cap, self.base * (2 ** attempt)) * (0.5 + random.random() / 2)


def registry_error_text(resp: Response) -> str:
    """The registry's own error text: `CODE: message (detail)` for each error, else the body."""
    try:
        doc = json.loads(resp.content[:65536] or b"{}")
        errors = doc.get("errors") if isinstance(doc, dict) else None
        if errors:
            parts = []
            for err in errors[:5]:
                text = f"{err.get('code', '?')}: {err.get('message', '')}".strip()
                detail = err.get("detail")
                if detail and not isinstance(detail, (dict, list)):
                    text += f" ({detail})"
                elif isinstance(detail, (dict, list)) and detail:
                    text += f" ({json.dumps(detail)[:200]})"
                parts.append(text)
            return "; ".join(parts)
    except (ValueError, AttributeError, TypeError, RecursionError):  # hostile bodies: `[[[[...`
        pass
    body = resp.text.strip()[:300] if resp.content else ""
    return f"HTTP {resp.status_code} {resp.reason}" + (f": {body}" if body else "")


@dataclass
class Transport:
    """Requests to `base_url` (http(s)://host) with retries and per-scope auth."""

    host: str
    base_url: str
    credentials: Credentials | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    pool: int = 16

    def __post_init__(self) -> None:
        self.http = urllib3.PoolManager(num_pools=4, maxsize=self.pool, retries=ONE_TRY, timeout=TIMEOUT,
                                        headers={"User-Agent": "dagseal"})
        self._tokens: dict[str, str] = {}  # scope -> bearer token
        self._basic = False  # the registry asked for basic auth
        self._lock = threading.Lock()

    def close(self) -> None:
        self.http.clear()

    def _send(self, method: str, url: str, headers: dict[str, str], data: bytes | None, params, stream: bool) -> Response:
        if params:
            url += ("&" if "?" in url else "?") + urlencode(params)
        all_headers = {"User-Agent": "dagseal", **headers}
        raw = self.http.request(method, url, body=data, headers=all_headers, preload_content=not stream)
        return Response(raw, method, url, all_headers, stream)

    # -- auth -----------------------------------------------------------------------------------
    def _auth_header(self, scope: str) -> str | None:
        with self._lock:
            if self._basic and self.credentials:
                return self.credentials.basic_header()
            return self._tokens.get(scope)

    def _authenticate(self, resp: Response, scope: str) -> None:
        """Answer a 401: remember basic auth, or fetch a bearer token for `scope` (fresh, always)."""
        header = resp.headers.get("WWW-Authenticate", "")
        challenge = parse_challenge(header) if header else Challenge("", {})
        if challenge.scheme == "basic":
            if not self.credentials:
                raise self._auth_error(resp, "the registry wants a username and password")
            with self._lock:
                self._basic = True
            return
        if challenge.scheme != "bearer" or not challenge.realm:
            raise self._auth_error(resp, f"unsupported authentication challenge {header!r}")
        scopes = [s for s in scope.split(" ") if s]
        resources = {s.rsplit(":", 1)[0] for s in scopes}
        for extra in (challenge.params.get("scope") or "").split(" "):  # what the registry asks for, if new
            if extra and extra.rsplit(":", 1)[0] not in resources:
                scopes.append(extra)
        params: list[tuple[str, str]] = [("scope", s) for s in scopes]
        if challenge.params.get("service"):
            params.insert(0, ("service", challenge.params["service"]))
        if self.credentials and challenge.realm.startswith("http://") and self.base_url.startswith("https://"):
            raise StorageError(f"{self.host} sends its token requests to plain-HTTP {challenge.realm}; "
                               f"refusing to send credentials there", hint="fix the registry's token realm (https)")
        headers = {"Authorization": self.credentials.basic_header()} if self.credentials else {}
        try:
            answer = self._send("GET", challenge.realm, headers, None, params, False)
        except (Urllib3Error, OSError) as exc:
            raise StorageError(f"token service {challenge.realm} for {self.host} is unreachable: {_short(exc)}") from None
        if answer.status_code != 200:
            raise self._auth_error(answer, f"token service {challenge.realm} refused")
        try:
            doc = json.loads(answer.content)
            token = (doc.get("token") or doc.get("access_token")) if isinstance(doc, dict) else None
        except (ValueError, RecursionError):  # a hostile token service's `[[[[...`
            token = None
        if not token:
            raise StorageError(f"token service {challenge.realm} for {self.host} answered without a token")
        with self._lock:
            self._tokens[scope] = "Bearer " + token

    def _auth_error(self, resp: Response, what: str) -> StorageError:
        who = f"as {self.credentials.username!r}" if self.credentials else "anonymously (no credentials found)"
        text = registry_error_text(resp)
        if not resp.content and resp.method == "HEAD":
            text = self._error_text_of(resp) or text  # HEAD answers carry no body: ask for the text
        return StorageError(f"authentication to {self.host} failed {who}: {what}: {text}",
                            hint=f"check the credentials in {describe_sources(self.host)}")

    def _error_text_of(self, resp: Response) -> str | None:
        """The registry's error text for a bodiless HEAD answer: the same request as a GET."""
        try:
            again = self._send("GET", resp.url, dict(resp.request_headers), None, None, False)
            return registry_error_text(again) if again.status_code == resp.status_code and again.content else None
        except (Urllib3Error, OSError):
            return None

    # -- requests -------------------------------------------------------------------------------
    def request(self, method: str, url: str, *, scope: str, ok: Iterable[int] = (200,),
                headers: dict[str, str] | None = None, data: bytes | None = None,
                params: dict | None = None, stream: bool = False, what: str = "",
                retry: bool = True) -> Response:
        """Send with retries and auth; return a response whose status is in `ok` or 404 (callers
        decide what a 404 means); anything else raises StorageError with the registry's text.

        `retry=False` is for requests that are not safe to resend blindly (a PATCH that may have
        been partly received): the first connection error or 5xx is raised for the caller to
        resume from the server's state."""
        tries = self.retry.tries if retry else 1
        full = url if url.startswith("http") else self.base_url + url
        ok = tuple(ok)
        authed_after_401 = False
        attempt = 0
        while True:
            hdrs = dict(headers or {})
            auth = self._auth_header(scope)
            if auth:
                hdrs["Authorization"] = auth
            try:
                resp = self._send(method, full, hdrs, data, params, stream)
            except MaxRetryError as exc:
                if isinstance(exc.reason, SSLError):  # not transient: retrying cannot help
                    raise StorageError(f"{what or method + ' ' + full}: TLS with {self.host} failed: {_short(exc)}",
                                       hint="if the registry speaks plain HTTP, pass --plain-http (loopback hosts use "
                                            "it automatically); else fix its certificate") from None
                attempt = self._backoff_or_raise(attempt, tries, exc, what or f"{method} {full}")
                continue
            except (Urllib3Error, OSError) as exc:
                attempt = self._backoff_or_raise(attempt, tries, exc, what or f"{method} {full}")
                continue
            if resp.status_code in ok or resp.status_code == 404:
                return resp
            if resp.status_code == 401 and not authed_after_401:
                authed_after_401 = True
                resp.close()
                self._authenticate(resp, scope)
                continue
            if resp.status_code in (401, 403):
                raise self._auth_error(resp, f"{what or method} was denied")
            if resp.status_code in RETRY_STATUS:
                attempt += 1
                if attempt < tries:
                    delay = self.retry.delay(attempt, resp.headers.get("Retry-After"))
                    resp.close()
                    time.sleep(delay)
                    continue
                raise StorageError(f"{what or method + ' ' + full}: registry {self.host} failed after {attempt} tries: "
                                   f"{registry_error_text(resp)}", hint="retry later; the registry reports an internal error")
            raise StorageError(f"{what or method + ' ' + full}: registry {self.host} answered {resp.status_code}: "
                               f"{registry_error_text(resp)}")

    def _backoff_or_raise(self, attempt: int, tries: int, exc: Exception, what: str) -> int:
        attempt += 1
        if attempt >= tries:
            raise StorageError(f"{what}: registry {self.host} unreachable after {attempt} tries: {_short(exc)}",
                               hint="check that the registry is up and reachable") from None
        time.sleep(self.retry.delay(attempt))
        return attempt

    def not_found(self, resp: Response, what: str, hint: str | None = None) -> NotFound:
        return NotFound(f"{what}: registry {self.host} says {registry_error_text(resp)}", hint=hint)


def _short(exc: Exception) -> str:
    """The innermost reason of a urllib3 error (not the whole wrapper chain)."""
    reason = getattr(exc, "reason", None)
    text = str(reason or exc)
    if "Failed to establish a new connection:" in text:
        text = text.split("Failed to establish a new connection:", 1)[1].strip()
    return text if len(text) < 300 else text[:300] + "..."
