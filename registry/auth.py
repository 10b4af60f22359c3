"""Registry credentials the way docker and oras users expect them, and the auth challenge flow.

Where credentials come from, first match wins:
1. `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json` (oras-py 0.2.43 ignores
   DOCKER_CONFIG: upstream gap): `credHelpers[host]`, then `auths[host]` when it holds a secret
   (`auth` = base64 "user:password", or `username`/`password`; `identitytoken` is sent as the
   password of user `<token>`; the OAuth2 refresh-token grant is not implemented), then the
   `credsStore` helper (docker leaves empty `auths` entries when one is set; a credsStore that is
   not installed means anonymous access);
2. AWS ECR hosts (`<account>.dkr.ecr.<region>.amazonaws.com`): a token from boto3's
   `ecr.get_authorization_token` (honours AWS_* variables, including AWS_ENDPOINT_URL).

Credential helpers are run as `docker-credential-<name> get` with the server on stdin, exactly
like docker does; their failure is reported with their own output.

Guards against: leaking a password to a host it was not configured for (lookup is by exact
registry host), hanging on a broken helper (timeout), and silently anonymous pushes (a 401 with
no credentials says where credentials are looked up).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from registry.errors import BadInput, StorageError

ECR_HOST = re.compile(r"^(?P<account>[0-9]{12})\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")
HELPER_TIMEOUT = 30


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def basic_header(self) -> str:
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()

    def __repr__(self) -> str:  # never print secrets
        return f"Credentials(username={self.username!r}, password=***)"


@dataclass(frozen=True)
class Challenge:
    """A parsed `WWW-Authenticate` header: scheme ("basic" or "bearer") and its parameters."""

    scheme: str
    params: dict[str, str]

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")


_PARAM = re.compile(r'([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')


def parse_challenge(header: str) -> Challenge:
    """Parse `Bearer realm="...",service="...",scope="..."` (or Basic). Values may hold commas."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3)) for m in _PARAM.finditer(rest)}
    return Challenge(scheme.lower(), params)


def docker_config_path() -> Path:
    root = os.environ.get("DOCKER_CONFIG")
    return Path(root) / "config.json" if root else Path.home() / ".docker" / "config.json"


def _load_config(path: Path) -> dict:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise BadInput(f"cannot read docker config {path}: {exc}", hint="fix its permissions or set DOCKER_CONFIG") from None
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise BadInput(f"docker config {path} is not valid JSON: {exc}", hint="fix the file or set DOCKER_CONFIG") from None
    if not isinstance(doc, dict):
        raise BadInput(f"docker config {path} is not a JSON object", hint="fix the file or set DOCKER_CONFIG")
    return doc


def _auth_keys(host: str) -> list[str]:
    """Keys a host may appear under in `auths` (docker writes some with a scheme or a /v1/ path)."""
    keys = [host, f"https://{host}", f"http://{host}", f"https://{host}/v1/", f"http://{host}/v1/"]
    if host in ("docker.io", "registry-1.docker.io", "index.docker.io"):
        keys.append("https://index.docker.io/v1/")
    return keys


def _from_auths(auths: dict, host: str, path: Path) -> Credentials | None:
    for key in _auth_keys(host):
        entry = auths.get(key)
        if not isinstance(entry, dict):
            continue
        if entry.get("identitytoken"):
            return Credentials("<token>", str(entry["identitytoken"]))
        if entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise BadInput(f"docker config {path}: auths[{key!r}].auth is not base64 of user:password",
                               hint=f"log in again (docker login {host}) or fix the entry") from None
            return Credentials(user, password)
        if entry.get("username") is not None and entry.get("password") is not None:
            return Credentials(str(entry["username"]), str(entry["password"]))
    return None


def run_helper(name: str, host: str) -> Credentials | None:
    """Ask `docker-credential-<name> get` for `host`; None when the helper knows no credentials."""
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise BadInput(f"credential helper name {name!r} is not valid", hint="fix credHelpers/credsStore in the docker config")
    program = f"docker-credential-{name}"
    try:
        proc = subprocess.run([program, "get"], input=host.encode(), capture_output=True, timeout=HELPER_TIMEOUT)
    except FileNotFoundError:
        raise BadInput(f"credential helper {program} (configured for {host}) is not on PATH",
                       hint=f"install {program} or remove it from the docker config") from None
    except subprocess.TimeoutExpired:
        raise StorageError(f"credential helper {program} did not answer for {host} within {HELPER_TIMEOUT}s") from None
    text = (proc.stdout or proc.stderr).decode(errors="replace").strip()
    if proc.returncode != 0:
        if "credentials not found" in text.lower():
            return None
        raise StorageError(f"credential helper {program} failed for {host}: {text}",
                           hint=f"run `echo {host} | {program} get` to see why")
    try:
        doc = json.loads(proc.stdout)
        return Credentials(str(doc["Username"]), str(doc["Secret"]))
    except (ValueError, KeyError, TypeError):
        raise StorageError(f"credential helper {program} answered for {host} with something that is not "
                           f"{{\"Username\", \"Secret\"}} JSON") from None


def ecr_credentials(host: str) -> Credentials:
    """An ECR login token for `host` from boto3 (user `AWS`, 12-hour token)."""
    match = ECR_HOST.match(host)
    if not match:
        raise BadInput(f"{host} is not an ECR registry host")
    try:
        import boto3

        client = boto3.client("ecr", region_name=match["region"])
        answer = client.get_authorization_token(registryIds=[match["account"]])
        token = answer["authorizationData"][0]["authorizationToken"]
    except Exception as exc:  # botocore errors carry the service's own message
        raise StorageError(f"cannot get an ECR token for {host}: {exc}",
                           hint="check AWS credentials (AWS_PROFILE / AWS_ACCESS_KEY_ID) and ecr:GetAuthorizationToken permission") from None
    user, _, password = base64.b64decode(token).decode().partition(":")
    return Credentials(user, password)


def lookup_credentials(host: str) -> Credentials | None:
    """Credentials for a registry host, or None for anonymous access."""
    path = docker_config_path()
    config = _load_config(path)
    helpers = config.get("credHelpers") or {}
    if isinstance(helpers, dict) and helpers.get(host):
        return run_helper(str(helpers[host]), host)
    found = _from_auths(config.get("auths") or {}, host, path)
    if found:
        return found
    if config.get("credsStore"):
        try:
            found = run_helper(str(config["credsStore"]), host)
        except BadInput:  # a desktop default (e.g. "desktop") absent on CI: go on anonymously, like a
            found = None  # registry that needs no login; a 401 then names where credentials are read
        if found:
            return found
    if ECR_HOST.match(host):
        return ecr_credentials(host)
    return None


def describe_sources(host: str) -> str:
    """Where credentials for `host` are looked up (for error messages)."""
    return f"{docker_config_path()} (auths/credHelpers/credsStore for {host!r})"
