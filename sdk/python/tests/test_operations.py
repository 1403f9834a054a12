"""What operators use, against live servers (auth off and on): the health probes, Prometheus
metrics parsed by the reference parser (prometheus-client), per-VM stats that move when the
guest works, the access log, and the offline API docs page."""

from __future__ import annotations

import time

import httpx
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from bandsox import MicroVM

from .conftest import Server


def _families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _requests_of(fams: dict, route: str, status: str) -> float:
    return sum(
        s.value
        for s in fams["bandsox_http_requests"].samples
        if s.name == "bandsox_http_requests_total"
        and s.labels.get("route") == route
        and s.labels.get("status") == status
    )


def test_probes_and_metrics_with_auth_off(server: Server, vm: MicroVM):
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok", "checks": []}
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 200
    assert {c["name"]: c["ok"] for c in ready.json()["checks"]} == {
        "database": True, "storage": True, "kernel_assets": True, "vmm": True}

    before = _families(httpx.get(f"{server.url}/metrics").text)
    for _ in range(3):
        assert httpx.get(f"{server.url}/api/vms/{vm.vm_id}").status_code == 200
    assert httpx.get(f"{server.url}/api/vms/nope-nope").status_code == 404
    r = httpx.get(f"{server.url}/metrics")
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    after = _families(r.text)
    route = "/api/vms/{id}"
    assert _requests_of(after, route, "200") - _requests_of(before, route, "200") == 3
    assert _requests_of(after, route, "404") - _requests_of(before, route, "404") == 1
    errors = {s.labels["code"]: s.value for s in after["bandsox_errors"].samples
              if s.name == "bandsox_errors_total"}
    assert errors.get("vm_not_found", 0) >= 1
    running = [s.value for s in after["bandsox_vms"].samples if s.labels.get("state") == "running"]
    assert running and running[0] >= 1
    hist = after["bandsox_http_request_duration_seconds"]
    counts = [s for s in hist.samples if s.name.endswith("_count") and s.labels["route"] == route]
    assert counts and counts[0].value >= 3

    # Every request has a log line with its route and status; none of them is coloured.
    log = server.log.read_text(errors="replace")
    assert "bandsox::access" in log and "route=/api/vms/{id}" in log and "status=404" in log
    assert "\x1b[" not in log


def test_probes_and_metrics_with_auth_on(auth_server: Server):
    url = auth_server.url
    # The probes need no credentials; the metrics do.
    assert httpx.get(f"{url}/healthz").status_code == 200
    assert httpx.get(f"{url}/readyz").status_code == 200
    assert httpx.get(f"{url}/metrics").status_code == 401
    r = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {auth_server.api_key}"})
    assert r.status_code == 200
    fams = _families(r.text)
    assert _requests_of(fams, "/metrics", "401") >= 1
    log = auth_server.log.read_text(errors="replace")
    assert "status=401" in log  # refused requests are logged too
    assert auth_server.api_key not in log


def test_docs_page_works_offline(server: Server, auth_server: Server):
    for s in (server, auth_server):
        r = httpx.get(f"{s.url}/api/docs/", follow_redirects=True)
        assert r.status_code == 200 and "swagger" in r.text.lower()
        assert "default-src 'self'" in r.headers["content-security-policy"]
        init = httpx.get(f"{s.url}/api/docs/swagger-initializer.js")
        assert init.status_code == 200 and "/api/openapi.json" in init.text


def test_stats_move_when_the_guest_works(server: Server, vm: MicroVM):
    def stats() -> dict:
        r = httpx.get(f"{server.url}/api/vms/{vm.vm_id}/stats", timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    idle = stats()
    assert idle["status"] == "running" and idle["mem_total_bytes"] > 0
    assert idle["disk_size_bytes"] >= 64 << 20
    vm.exec_command("(dd if=/dev/zero of=/dev/null >/dev/null 2>&1 &); "
                    "dd if=/dev/zero of=/dev/shm/ballast bs=1M count=24 2>/dev/null")
    try:
        time.sleep(0.5)
        busy = stats()
        assert busy["cpu_percent"] > max(30.0, idle["cpu_percent"] + 20), (idle, busy)
        assert busy["mem_used_bytes"] >= idle["mem_used_bytes"] + (16 << 20), (idle, busy)
        assert busy["cpu_time_ms"] > idle["cpu_time_ms"]
    finally:
        vm.exec_command("pkill dd; rm -f /dev/shm/ballast")
