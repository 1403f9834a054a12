"""A server with authentication on (`bandsox auth init` before `serve`): 401 maps to
AuthenticationError, and the printed API key works from every place the client reads it."""

from __future__ import annotations

import json

import pytest

from bandsox import AuthenticationError, BandSox
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
