"""Logging in with the admin password (a session cookie), and managing API keys."""
import os

from bandsox import AuthenticationError, BandSox

url = os.environ.get("BANDSOX_URL", "http://127.0.0.1:8000")
bs = BandSox(url)
print("authenticated:", bs.auth_check())                  # False: no key, no session
bs.login(os.environ["BANDSOX_PASSWORD"])                  # sets the bandsox_session cookie
print("authenticated:", bs.auth_check())                  # True

key = bs.create_api_key("ci")                             # the only time the secret is shown
ci = BandSox(url, api_key=key["key"])
print("VMs seen with the new key:", len(ci.list_vms()))
bs.revoke_api_key(key["key_id"])
try:
    ci.list_vms()
except AuthenticationError as e:
    print("revoked key:", e.status_code, e.code)          # 401 unauthorized
bs.logout()
