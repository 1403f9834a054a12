"""VM methods against a live server with a real VM (one VM shared by the whole module; the
lifecycle tests that stop and boot it again come last)."""

from __future__ import annotations

import time

import pytest

from bandsox import BandSox, HttpResponse, MicroVM, errors

from .conftest import IMAGE


def test_version(bs: BandSox):
    v = bs.version()
    assert v["version"] == "0.1.0" and v["backend"]


def test_create_vm_and_info(bs: BandSox, vm: MicroVM):
    info = bs.get_vm_info(vm.vm_id)
    assert info["id"] == vm.vm_id
    assert info["name"] == "py-shared"
    assert info["image"] == IMAGE
    assert info["status"] == "running" and info["agent_ready"] is True
    assert info["metadata"] == {"suite": "python", "role": "shared"}
    # Secret-looking values are redacted in the API, but the guest gets them.
    assert info["env_vars"] == {"GREETING": "hello", "API_TOKEN": "<redacted>"}
    same = bs.get_vm(vm.vm_id)
    assert isinstance(same, MicroVM) and same == vm
    assert same.name == "py-shared" and same.status == "running"
    assert same.info["vcpu"] == 1 and same.info["mem_mib"] == 128
    assert vm.refresh()["id"] == vm.vm_id
    assert vm.get_info()["image"] == IMAGE
    assert vm.wait_for_agent(timeout=10) is True
    # The per-VM host-side address the host reaches the guest at (10.231.x.y).
    ip = vm.get_guest_ip()
    assert ip is not None and ip.startswith("10.231."), ip


def test_exec_command(vm: MicroVM):
    r = vm.exec_command("echo $GREETING $API_TOKEN; echo oops >&2; exit 3")
    assert r == 3 and r.exit_code == 3
    assert r.stdout == "hello s3cret\n"
    assert r.stderr == "oops\n"
    assert r["stdout"] == r.stdout
    assert vm.exec_command("true") == 0


def test_exec_callbacks_get_the_output(vm: MicroVM):
    out, err = [], []
    r = vm.exec_command("for i in 1 2 3; do echo line$i; done; echo e >&2",
                        on_stdout=out.append, on_stderr=err.append, timeout=10)
    assert r == 0
    assert "".join(out) == "line1\nline2\nline3\n"
    assert "".join(err) == "e\n"


def test_exec_env_cwd_and_signal(vm: MicroVM):
    r = vm.exec_command("pwd; echo $X", env={"X": "y"}, cwd="/tmp")
    assert r.stdout == "/tmp\ny\n"
    assert vm.exec_command("kill -9 $$") == 128 + 9


def test_exec_timeout(vm: MicroVM):
    t = time.monotonic()
    with pytest.raises(errors.TimeoutError) as ei:
        vm.exec_command("sleep 20", timeout=1)
    assert ei.value.code == "exec_timeout" and ei.value.status_code == 504
    assert time.monotonic() - t < 15
    assert vm.exec_command("echo still-alive").stdout == "still-alive\n"


def test_exec_bad_timeout_is_invalid_input(vm: MicroVM):
    with pytest.raises(errors.InvalidInputError) as ei:
        vm.exec_command("true", timeout=0)
    assert ei.value.code == "invalid_input" and ei.value.status_code == 422


def test_exec_python_without_python_in_the_image(vm: MicroVM):
    # The test image is busybox: the server answers with a clear error, not a crash.
    out = vm.exec_python_capture("print(1)")
    assert out["success"] is False and "python3 not found" in out["error"]
    seen = []
    assert vm.exec_python("print(1)", on_stdout=seen.append, on_stderr=seen.append) == -1


def test_send_http_request_reaches_a_server_in_the_guest(vm: MicroVM):
    # The VM has networking (the default): busybox httpd answers through POST /http.
    assert vm.exec_command("mkdir -p /www && echo ok > /www/health && "
                           "echo '{\"a\": [1, 2]}' > /www/data.json && httpd -p 8080 -h /www") == 0
    r = vm.send_http_request(8080, "/health")
    # BandSox's dict ...
    assert r["status_code"] == 200 and r["body"] == "ok\n"
    # ... that is also a response object.
    assert isinstance(r, HttpResponse) and r.status_code == 200 and r.ok
    assert r.text == "ok\n" and r.content == b"ok\n" and r.headers["Content-Length"] == "3", dict(r)
    j = vm.send_http_request(8080, "/data.json")
    assert j.json() == {"a": [1, 2]}, dict(j)
    missing = vm.send_http_request(8080, "/nope")
    assert missing.status_code == 404 and not missing.ok
    with pytest.raises(errors.BandSoxError) as ei:
        vm.send_http_request(9, "/", timeout=2)
    assert ei.value.status_code == 502 and ei.value.code == "guest_unreachable"


def test_send_http_request_sends_bytes_exactly(vm: MicroVM):
    # A listener that records the raw request and never answers: the call times out (504),
    # and the recorded request holds the body byte for byte.
    # (nc shuts its side when its stdin ends, so stdin is a pipe that stays open.)
    cmd = "(sleep 10 | nc -l -p 8081 > /tmp/req.bin 2>/dev/null &) ; sleep 0.3"
    assert vm.exec_command(cmd) == 0
    body = bytes(range(256))
    with pytest.raises(errors.BandSoxError) as ei:
        vm.send_http_request(8081, "/up", method="POST", data=body, timeout=2)
    assert ei.value.status_code == 504
    recorded = vm.read_bytes("/tmp/req.bin")
    assert recorded is not None and recorded.endswith(body)


def test_list_vms_filters_and_total(bs: BandSox, vm: MicroVM):
    ids = [v["id"] for v in bs.list_vms()]
    assert vm.vm_id in ids
    assert [v["id"] for v in bs.list_vms(metadata_equals={"role": "shared"})] == [vm.vm_id]
    assert bs.list_vms(metadata_equals={"role": "nobody"}) == []
    assert vm.vm_id in [v["id"] for v in bs.list_vms(status="running")]
    assert bs.list_vms(status="paused", metadata_equals={"role": "shared"}) == []
    assert [v["id"] for v in bs.list_vms(name="py-sha")] == [vm.vm_id]
    page = bs.list_vms_page(limit=1)
    assert len(page.items) == 1 and page.total == len(ids) and page.limit == 1
    page = bs.list_vms_page(limit=1, offset=page.total)
    assert page.items == [] and page.total == len(ids)
    assert len(bs.list_vms(limit=1)) == 1
    # BandSox ignores a metadata_equals that is not JSON (lists everything); so do we.
    assert len(bs._json("GET", "/api/vms", params={"metadata_equals": "not json"})) == len(ids)


def test_rename_and_metadata(bs: BandSox, vm: MicroVM):
    assert vm.rename("py-renamed") == "py-renamed"
    assert bs.get_vm_info(vm.vm_id)["name"] == "py-renamed"
    assert bs.rename_vm(vm.vm_id, "py-shared") == "py-shared"
    info = vm.update_metadata({"suite": "python", "role": "shared", "n": 1})
    assert info["metadata"]["n"] == 1 and vm.info["metadata"]["n"] == 1
    info = bs.update_vm_metadata(vm, {"suite": "python", "role": "shared"})
    assert info["metadata"] == {"suite": "python", "role": "shared"}


def test_timeouts_extend(vm: MicroVM):
    info = vm.set_timeout(3600, action="pause")
    assert info["timeout_action"] == "pause" and info["expires_at"] > time.time() + 3500
    before = info["expires_at"]
    info = vm.extend_timeout(600)
    assert info["expires_at"] == pytest.approx(before + 600, abs=2)
    info = vm.set_timeout(0)
    assert info["expires_at"] is None
    with pytest.raises(errors.InvalidInputError):
        vm.set_timeout(10, action="explode")


def test_pause_resume(vm: MicroVM):
    vm.pause()
    assert vm.refresh()["status"] == "paused"
    with pytest.raises(errors.ConflictError) as ei:
        vm.exec_command("true")
    assert ei.value.code == "conflict" and ei.value.status_code == 409
    with pytest.raises(errors.ConflictError):  # over the exec-stream WebSocket too
        vm.exec_command("true", on_stdout=print)
    with pytest.raises(errors.ConflictError):
        vm.run_command("true")
    vm.pause()  # no-op
    vm.resume()
    assert vm.refresh()["status"] == "running"
    assert vm.exec_command("echo back").stdout == "back\n"


def test_not_found_errors(bs: BandSox):
    with pytest.raises(errors.VmNotFoundError) as ei:
        bs.get_vm("no-such-vm")
    assert ei.value.status_code == 404 and ei.value.code == "vm_not_found"
    assert isinstance(ei.value, FileNotFoundError)
    with pytest.raises(errors.VmNotFoundError):
        bs.get_vm_info("no-such-vm")
    with pytest.raises(errors.VmNotFoundError):
        MicroVM(bs, "no-such-vm").exec_command("true")
    with pytest.raises(errors.VmNotFoundError):
        bs.delete_vm("no-such-vm")
    with pytest.raises(errors.VmNotFoundError):
        bs.rename_vm("no-such-vm", "x")


def test_create_invalid_input(bs: BandSox):
    with pytest.raises(errors.InvalidInputError) as ei:
        bs.create_vm(IMAGE, timeout_action="explode")
    assert ei.value.status_code == 422
    with pytest.raises(errors.InvalidInputError):
        bs.create_vm(None)  # type: ignore[arg-type]


def test_stop_start_restart(bs: BandSox, vm: MicroVM):
    vm.exec_command("echo persisted > /root/marker && sync")
    vm.stop()
    assert vm.refresh()["status"] == "stopped"
    with pytest.raises(errors.ConflictError):
        vm.exec_command("true")
    vm.start()
    assert vm.refresh()["status"] == "running"
    assert vm.exec_command("cat /root/marker").stdout == "persisted\n"
    vm.restart()
    assert vm.wait_for_agent(timeout=30)
    assert vm.exec_command("cat /root/marker").stdout == "persisted\n"


def test_create_vm_from_dockerfile_folder_is_the_context(bs: BandSox, tmp_path):
    # A folder with a Dockerfile, as BandSox takes it: COPY of a file and a folder, the
    # .dockerignore applied, ARG from build_args.
    ctx = tmp_path / "app"
    (ctx / "src" / "sub").mkdir(parents=True)
    (ctx / "src" / "main.sh").write_text("echo main\n")
    (ctx / "src" / "sub" / "deep.txt").write_text("deep\n")
    (ctx / "src" / "debug.log").write_text("log\n")
    (ctx / "config.txt").write_text("cfg\n")
    (ctx / "secret.env").write_text("TOKEN=x\n")
    (ctx / ".dockerignore").write_text("secret.env\n**/*.log\n")
    (ctx / "Dockerfile").write_text(
        f"FROM {IMAGE}\nARG GREETING=hi\nCOPY config.txt /etc/app.conf\nCOPY src /app/src\n"
        "COPY . /ctx\nRUN echo $GREETING > /greeting\n"
    )
    vm = bs.create_vm_from_dockerfile(ctx, tag="sdk/ctx:1", build_args={"GREETING": "hello"})
    try:
        r = vm.exec_command(
            "cat /etc/app.conf /app/src/main.sh /app/src/sub/deep.txt /greeting; "
            "ls -A /ctx | tr '\\n' ' '; echo; ls -A /app/src | tr '\\n' ' '"
        )
        assert r.exit_code == 0, r.stderr
        assert r.stdout == (
            "cfg\necho main\ndeep\nhello\n"
            ".dockerignore Dockerfile config.txt src \n"
            "main.sh sub "
        )
    finally:
        vm.delete()
    # The Dockerfile's path plus context= is the same build (reused from the tag's cache).
    vm = bs.create_vm_from_dockerfile(
        ctx / "Dockerfile", tag="sdk/ctx:1", build_args={"GREETING": "hello"}, context=ctx
    )
    try:
        assert vm.exec_command("cat /greeting /etc/app.conf").stdout == "hello\ncfg\n"
    finally:
        vm.delete()
    with pytest.raises(errors.InvalidInputError, match="no file named Dockerfile"):
        bs.create_vm_from_dockerfile(ctx / "src")


def test_create_vm_from_dockerfile_context_cannot_be_left(bs: BandSox, tmp_path):
    (tmp_path / "outside.txt").write_text("host secret\n")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "ok.txt").write_text("ok\n")
    (ctx / "link").symlink_to(tmp_path / "outside.txt")
    before = {v["id"] for v in bs.list_vms()}
    for source in ["../outside.txt", "link"]:
        (ctx / "Dockerfile").write_text(f"FROM {IMAGE}\nCOPY {source} /x\n")
        with pytest.raises(errors.InvalidInputError) as ei:
            bs.create_vm_from_dockerfile(ctx, tag="sdk/escape:1")
        assert ei.value.code == "invalid_input", ei.value
    # Without a context, COPY is refused before any VM boots.
    (ctx / "Dockerfile").write_text(f"FROM {IMAGE}\nCOPY ok.txt /x\n")
    with pytest.raises(errors.InvalidInputError, match="COPY/ADD need a build context"):
        bs.create_vm_from_dockerfile(ctx / "Dockerfile")
    assert {v["id"] for v in bs.list_vms()} == before


def test_create_vm_from_dockerfile(bs: BandSox, tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(f"FROM {IMAGE}\nENV BUILT=yes\nWORKDIR /app\nRUN echo built > made\n")
    vm = bs.create_vm_from_dockerfile(dockerfile, tag="sdk/built:1", name="from-df")
    try:
        r = vm.exec_command("cat made; echo $BUILT; pwd")
        assert r.stdout == "built\nyes\n/app\n"
        assert vm.get_info()["image"] == "sdk/built:1"
    finally:
        vm.delete()
    dockerfile.write_text(f"FROM {IMAGE}\nRUN echo no >&2; exit 4\n")
    with pytest.raises(errors.InvalidInputError) as ei:
        bs.create_vm_from_dockerfile(dockerfile)
    assert ei.value.code == "build_failed" and "exited with 4: no" in str(ei.value)
