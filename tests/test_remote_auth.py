"""Registry auth the docker way: DOCKER_CONFIG auths, credential helpers, basic, bearer tokens, ECR."""

import base64
import json
import os
import stat

import pytest

from registry.auth import Credentials, ecr_credentials, lookup_credentials, parse_challenge
from registry.errors import BadInput
from registry.layout import LayoutStore
from tests.fixtures.registry import add_referrer, make_image


def _docker_config(tmp_path, monkeypatch, doc: dict):
    folder = tmp_path / "docker-config"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(doc))
    monkeypatch.setenv("DOCKER_CONFIG", str(folder))
    return folder


def _login(server, password=None) -> dict:
    auth = base64.b64encode(f"{server.username}:{password or server.password}".encode()).decode()
    return {"auths": {server.host: {"auth": auth}}}


def _image(tmp_path):
    src = LayoutStore(tmp_path / "src")
    image = make_image(src, "team_a/auth", "1.0", [os.urandom(64)])
    add_referrer(src, "team_a/auth", image, b'{"sig":true}')
    return f"oci:{tmp_path / 'src'}:team_a/auth:1.0", image


@pytest.mark.parametrize("kind", ["htpasswd", "token"])
def test_push_and_pull_with_docker_config_credentials(kind, registry_factory, dagseal, tmp_path, monkeypatch):
    server = registry_factory(kind)
    _docker_config(tmp_path, monkeypatch, _login(server))
    src, image = _image(tmp_path)
    pushed = dagseal("push", src, server.ref("team_a/auth:1.0"), "--json")
    assert pushed.code == 0, pushed.stdout + pushed.stderr
    assert pushed.json_lines[0]["digest"] == image.digest and pushed.json_lines[0]["referrers"] == 1
    back = dagseal("copy", server.ref("team_a/auth:1.0"), f"oci:{tmp_path / 'back'}:team_a/auth:1.0", "--json")
    assert back.code == 0, back.stdout
    assert back.json_lines[0]["digest"] == image.digest
    if kind == "token":  # a pull token was cached first; the push got a fresh pull,push token on 401
        assert any("repository:team_a/auth:pull,push" in scopes for scopes in server.token_server.issued)


@pytest.mark.parametrize("kind", ["htpasswd", "token"])
def test_wrong_password_exits_4_with_the_registry_message(kind, registry_factory, dagseal, tmp_path, monkeypatch):
    server = registry_factory(kind)
    _docker_config(tmp_path, monkeypatch, _login(server, password="wrong"))
    src, _ = _image(tmp_path)
    result = dagseal("push", src, server.ref("team_a/auth:1.0"), "--json")
    assert result.code == 4
    error = result.json_lines[0]
    assert "authentication to" in error["message"] and "'alice'" in error["message"]
    expected = "invalid username or password" if kind == "token" else "UNAUTHORIZED"
    assert expected in error["message"]
    assert "config.json" in error["hint"]


def test_no_credentials_for_an_auth_registry_says_where_they_are_looked_up(registry_factory, dagseal, tmp_path, monkeypatch):
    server = registry_factory("htpasswd")
    _docker_config(tmp_path, monkeypatch, {})
    src, _ = _image(tmp_path)
    result = dagseal("push", src, server.ref("team_a/auth:1.0"))
    assert result.code == 4
    assert "no credentials found" in result.stderr and str(tmp_path / "docker-config") in result.stderr


def test_credential_helper_is_asked_for_the_host(registry_factory, dagseal, tmp_path, monkeypatch):
    server = registry_factory("htpasswd")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-dagsealtest"
    helper.write_text("#!/bin/sh\nread host\n"
                      f'if [ "$host" = "{server.host}" ]; then echo \'{{"Username":"{server.username}","Secret":"{server.password}"}}\'; '
                      'else echo "credentials not found in native keychain"; exit 1; fi\n')
    helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    _docker_config(tmp_path, monkeypatch, {"credHelpers": {server.host: "dagsealtest"}})
    assert lookup_credentials(server.host) == Credentials(server.username, server.password)
    src, image = _image(tmp_path)
    result = dagseal("push", src, server.ref("team_a/auth:1.0"), "--json")
    assert result.code == 0 and result.json_lines[0]["digest"] == image.digest
    # credsStore: the same helper for every host; it knows no credentials for another host
    _docker_config(tmp_path, monkeypatch, {"credsStore": "dagsealtest"})
    assert lookup_credentials("other.example:5000") is None


def test_missing_credential_helper_is_bad_input_naming_it(tmp_path, monkeypatch):
    _docker_config(tmp_path, monkeypatch, {"credHelpers": {"reg.example": "nosuchhelper"}})
    with pytest.raises(BadInput) as info:
        lookup_credentials("reg.example")
    assert "docker-credential-nosuchhelper" in info.value.message
    # a global credsStore that is not installed (a desktop default) means anonymous, not an error
    _docker_config(tmp_path, monkeypatch, {"credsStore": "nosuchhelper"})
    assert lookup_credentials("reg.example") is None


def test_auths_entries_in_their_docker_forms(tmp_path, monkeypatch):
    _docker_config(tmp_path, monkeypatch, {"auths": {
        "https://a.example": {"auth": base64.b64encode(b"u1:p:w").decode()},
        "b.example": {"username": "u2", "password": "p2"},
        "c.example": {"identitytoken": "refresh-token"},
        "d.example": {"auth": "%%%not base64"},
    }})
    assert lookup_credentials("a.example") == Credentials("u1", "p:w")
    assert lookup_credentials("b.example") == Credentials("u2", "p2")
    assert lookup_credentials("c.example") == Credentials("<token>", "refresh-token")
    assert lookup_credentials("e.example") is None
    with pytest.raises(BadInput) as info:
        lookup_credentials("d.example")
    assert "auths['d.example'].auth" in info.value.message


def test_broken_docker_config_is_bad_input_naming_the_file(tmp_path, monkeypatch):
    folder = _docker_config(tmp_path, monkeypatch, {})
    (folder / "config.json").write_text("{not json")
    with pytest.raises(BadInput) as info:
        lookup_credentials("reg.example")
    assert str(folder / "config.json") in info.value.message


def test_ecr_hosts_get_a_token_from_aws(aws_env, tmp_path, monkeypatch):
    _docker_config(tmp_path, monkeypatch, {})
    creds = lookup_credentials("123456789012.dkr.ecr.us-east-1.amazonaws.com")
    assert creds is not None and creds.username == "AWS" and creds.password
    with pytest.raises(BadInput):
        ecr_credentials("registry.example.com")


def test_challenge_parsing_keeps_commas_inside_quoted_scopes():
    c = parse_challenge('Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push"')
    assert c.scheme == "bearer" and c.realm == "https://auth.example/token"
    assert c.params["scope"] == "repository:a/b:pull,push" and c.params["service"] == "reg"
    assert parse_challenge('Basic realm="Registry Realm"').scheme == "basic"


def test_an_expired_token_is_refreshed_on_401(registry_factory):
    import time

    from registry.remote import RemoteStore

    # distribution accepts tokens up to 60 s past `exp` (clock-skew leeway): a token that expired
    # 58 s ago is accepted now and refused 2 s later, without waiting a minute
    server = registry_factory("token", token_lifetime=-58)
    with RemoteStore(server.host, plain_http=True, credentials=Credentials(server.username, server.password)) as remote:
        assert remote.tags("team_a/expiry") == []
        time.sleep(3.1)  # the cached token is now refused
        assert remote.tags("team_a/expiry") == []
    pulls = [s for s in server.token_server.issued if s == ["repository:team_a/expiry:pull"]]
    assert len(pulls) == 2
