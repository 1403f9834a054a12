"""Where the server is and how to authenticate: arguments, environment, credentials file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Mapping, Optional

DEFAULT_URL = "http://127.0.0.1:8000"


def credentials_path() -> Path:
    """``~/.bandsox/credentials``; under ``sudo`` the invoking user's (like the CLI)."""
    home: Optional[str] = None
    sudo_user = os.environ.get("SUDO_USER")
    if sudo_user and hasattr(os, "geteuid") and os.geteuid() == 0:
        try:
            import pwd

            home = pwd.getpwnam(sudo_user).pw_dir
        except (KeyError, ImportError):
            home = None
    return Path(home or os.path.expanduser("~")) / ".bandsox" / "credentials"


def load_api_key() -> Optional[str]:
    """``BANDSOX_API_KEY``, else ``api_key`` of the credentials file, else ``None``."""
    key = os.environ.get("BANDSOX_API_KEY")
    if key:
        return key
    try:
        data = json.loads(credentials_path().read_text())
    except (OSError, ValueError):
        return None
    key = data.get("api_key") if isinstance(data, dict) else None
    return key if isinstance(key, str) and key else None


def resolve(
    server_url: Optional[str],
    headers: Optional[Mapping[str, str]],
    api_key: Optional[str],
) -> "tuple[str, Dict[str, str]]":
    """Base URL and request headers. An explicit ``Authorization`` header wins over ``api_key``,
    which wins over the environment and the credentials file."""
    url = server_url or os.environ.get("BANDSOX_URL") or DEFAULT_URL
    url = url.rstrip("/")
    out: Dict[str, str] = {}
    for k, v in (headers or {}).items():
        out[k] = v
    if not any(k.lower() == "authorization" for k in out):
        key = api_key or load_api_key()
        if key:
            out["Authorization"] = f"Bearer {key}"
    return url, out
