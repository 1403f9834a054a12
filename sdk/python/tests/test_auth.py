"""A server with authentication on (`bandsox auth init` before `serve`): 401 maps to
AuthenticationError, and the printed API key works from every place the client reads it."""

from __future__ import annotations

import json

import pytest

from bandsox import AuthenticationError, BandSox, MicroVM, errors
from bandsox.core import BandSox as CoreBandSox

from .conftest import Server


def test_no_key_is_rejected(auth_server: Server):
    with pytest.raises(AuthenticationError) as ei:
        BandSox(auth_server.url).list_vms()
    assert ei.value.status_code == 401 and ei.value.code == "unauthorized"
    assert isinstance(ei.value, PermissionError)


def test_wrong_key_is_rejected(auth_server: Server):
    bad = auth_server.api_key[:-4] + "xxxx"
    with pytest.raises(AuthenticationError):
        BandSox(auth_server.url, headers={"Authorization": f"Bearer {bad}"}).list_vms()
    with pytest.raises(AuthenticationError):
        BandSox(auth_server.url, api_key="bsx_nope").list_snapshots()


def test_key_in_headers_works(auth_server: Server):
    bs = BandSox(auth_server.url, headers={"Authorization": f"Bearer {auth_server.api_key}"})
    assert bs.list_vms() == []
    assert bs.list_snapshots() == []
    assert bs.version()["version"] == "0.1.0"


def test_key_argument_env_and_credentials_file(auth_server: Server, monkeypatch, tmp_path):
    assert BandSox(auth_server.url, api_key=auth_server.api_key).list_vms() == []
    # BandSox(): URL and key from the environment.
    monkeypatch.setenv("BANDSOX_URL", auth_server.url)
    monkeypatch.setenv("BANDSOX_API_KEY", auth_server.api_key)
    assert CoreBandSox().list_vms() == []
    # ... or the key from ~/.bandsox/credentials.
    monkeypatch.delenv("BANDSOX_API_KEY")
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(AuthenticationError):
        CoreBandSox().list_vms()
    (tmp_path / ".bandsox").mkdir()
    (tmp_path / ".bandsox" / "credentials").write_text(
        json.dumps({"api_key": auth_server.api_key, "server_url": auth_server.url}))
    assert CoreBandSox().list_vms() == []
    # An explicit Authorization header wins over the saved key.
    with pytest.raises(AuthenticationError):
        CoreBandSox(headers={"Authorization": "Bearer bsx_wrong"}).list_vms()


def test_login_uses_a_session_cookie(auth_server: Server):
    bs = BandSox(auth_server.url)
    assert bs.auth_check() is False
    with pytest.raises(AuthenticationError):
        bs.login("wrong-password")
    token = bs.login(auth_server.password)
    assert token and bs._client.cookies.get("bandsox_session")
    assert bs.auth_check() is True
    assert bs.list_vms() == []
    # The session can manage API keys; a new key works, a revoked one does not.
    made = bs.create_api_key("py-test")
    assert made["key"].startswith("bsx_") and made["name"] == "py-test"
    assert made["key_id"] in [k["id"] for k in bs.list_api_keys()]
    assert BandSox(auth_server.url, api_key=made["key"]).list_snapshots() == []
    bs.revoke_api_key(made["key_id"])
    with pytest.raises(AuthenticationError):
        BandSox(auth_server.url, api_key=made["key"]).list_snapshots()
    # WebSockets carry the session token: past auth, the missing VM is the error.
    with pytest.raises(errors.VmNotFoundError):
        MicroVM(bs, "no-such-vm").exec_command("true", on_stdout=print)
    bs.logout()
    assert bs.auth_check() is False
    with pytest.raises(AuthenticationError):
        bs.list_vms()
    with pytest.raises(AuthenticationError):
        BandSox(auth_server.url).login("")


def test_websockets_need_credentials(auth_server: Server):
    with pytest.raises(AuthenticationError) as ei:
        MicroVM(BandSox(auth_server.url), "x").exec_command("true", on_stdout=print)
    assert ei.value.status_code == 401
    with pytest.raises(AuthenticationError):
        MicroVM(BandSox(auth_server.url, api_key="bsx_bad"), "x").start_pty_session("/bin/sh")
    keyed = BandSox(auth_server.url, api_key=auth_server.api_key)
    with pytest.raises(errors.VmNotFoundError):
        MicroVM(keyed, "no-such-vm").exec_command("true", on_stdout=print)
