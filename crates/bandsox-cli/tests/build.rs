//! Dockerfile builds against a real server with real VMs: BandSox's multipart
//! `POST /api/vms/from-dockerfile`, `POST /api/images/build` and `bandsox image build`.
//! A build runs its `RUN` steps in a VM of the `FROM` image and records the result as an
//! image; the image config carries `ENV`/`WORKDIR`/`USER`/`CMD`. Bad input (COPY without a
//! context, a failing step, a tag naming an image that was not built, a context path out of
//! the context) changes nothing. With a context (`bandsox build -f FILE DIR`, auth on):
//! COPY of a file and a folder, `.dockerignore`, `--chown`, multi-stage `COPY --from`,
//! `--build-arg`, and the cache.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

mod common;

use common::{answer, bandsox, free_port, init, start_server, text, TestRoot};
use serde_json::{json, Value};

const DOCKERFILE: &str = r#"FROM bandsox/busybox
ARG GREETING_WORD=hello
ENV GREETING=$GREETING_WORD OTHER="two words"
WORKDIR /app
RUN echo "$GREETING" > greeting && \
    rm /etc/hostname && \
    id -u > uid && mkdir -m 777 /shared
RUN ["/bin/sh", "-c", "echo second >> /app/greeting"]
USER nobody
RUN id -u > /shared/build-uid
EXPOSE 8080
LABEL purpose=test
CMD ["sh"]
"#;

fn multipart(fields: &[(&str, &str)]) -> (String, Vec<u8>) {
    let boundary = "bsxbuildboundary";
    let mut body = Vec::new();
    for (name, value) in fields {
        let file = if *name == "dockerfile" {
            "; filename=\"Dockerfile\""
        } else {
            ""
        };
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"{file}\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn from_dockerfile(url: &str, fields: &[(&str, &str)]) -> (u16, Value) {
    let (ctype, body) = multipart(fields);
    answer(
        ureq::post(&format!("{url}/api/vms/from-dockerfile"))
            .set("Content-Type", &ctype)
            .send_bytes(&body),
    )
}

fn exec(url: &str, id: &str, cmd: &str) -> (u16, Value) {
    answer(ureq::post(&format!("{url}/api/vms/{id}/exec")).send_json(json!({ "command": cmd })))
}

fn vm_ids(url: &str) -> Vec<String> {
    let (_, list) = answer(ureq::get(&format!("{url}/api/vms")).call());
    list.as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_owned())
        .collect()
}

fn image_refs(url: &str) -> Vec<String> {
    let (_, list) = answer(ureq::get(&format!("{url}/api/images")).call());
    list.as_array()
        .unwrap()
        .iter()
        .map(|v| v["reference"].as_str().unwrap().to_owned())
        .collect()
}

/// Form fields, then the status, code and a piece of the detail they must answer.
type BadCase<'a> = (&'a [(&'a str, &'a str)], u16, &'a str, &'a str);

#[test]
fn dockerfile_builds_and_bad_input() {
    let dir = TestRoot::new("bsxbuild");
    let storage = dir.path().join("storage");
    let out = init(&storage);
    assert!(out.status.success(), "init: {}", text(&out.stderr));
    let port = free_port();
    let _server = start_server(&storage, port);
    let url = format!("http://127.0.0.1:{port}");

    // Bad input first: nothing may be created by any of these.
    let images_before = image_refs(&url);
    let cases: &[BadCase] = &[
        (
            &[("dockerfile", "FROM bandsox/busybox\nCOPY . /x\n")],
            422,
            "invalid_input",
            "need a build context",
        ),
        (
            &[(
                "dockerfile",
                "FROM bandsox/busybox\nRUN echo out; echo why >&2; exit 3\n",
            )],
            422,
            "build_failed",
            "exited with 3: why",
        ),
        (
            &[("dockerfile", "FROM bandsox/busybox\n"), ("vcpu", "0")],
            422,
            "invalid_input",
            "vcpu",
        ),
        (
            &[("tag", "x")],
            422,
            "invalid_input",
            "`dockerfile` is required",
        ),
        (
            &[
                ("dockerfile", "FROM bandsox/busybox\n"),
                ("tag", "bandsox/busybox"),
            ],
            409,
            "conflict",
            "not built from a Dockerfile",
        ),
        (
            &[("dockerfile", "FROM bandsox/busybox\n"), ("tag", "../evil")],
            422,
            "invalid_input",
            "",
        ),
    ];
    for (fields, status, code, needle) in cases {
        let (st, body) = from_dockerfile(&url, fields);
        assert_eq!(st, *status, "{fields:?}: {body}");
        assert_eq!(body["code"], *code, "{fields:?}: {body}");
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(needle), "{fields:?}: {detail}");
    }
    assert!(vm_ids(&url).is_empty(), "a failed build left a VM");
    assert_eq!(
        image_refs(&url),
        images_before,
        "a failed build left an image"
    );

    // A build, then a VM of it (BandSox's shape).
    let (st, created) = from_dockerfile(
        &url,
        &[
            ("dockerfile", DOCKERFILE),
            ("tag", "test/built:1"),
            ("name", "built-vm"),
            ("env_vars", r#"{"FROM_CREATE": "yes"}"#),
            ("metadata", r#"{"k": "v"}"#),
        ],
    );
    assert_eq!(st, 200, "{created}");
    assert_eq!(created["status"], "created");
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(vm_ids(&url), vec![id.clone()], "the build VM is gone");

    let (_, info) = answer(ureq::get(&format!("{url}/api/vms/{id}")).call());
    assert_eq!(info["name"], "built-vm");
    assert_eq!(info["metadata"]["k"], "v");
    // The image config: WORKDIR is the default cwd, USER the default user, ENV in every exec.
    let (st, r) = exec(
        &url,
        &id,
        "pwd; cat greeting; echo \"$GREETING|$OTHER|$FROM_CREATE\"; id -u; cat uid; \
         test -e /etc/hostname && echo hostname-present; cat /shared/build-uid",
    );
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        r["stdout"], "/app\nhello\nsecond\nhello|two words|yes\n65534\n0\n65534\n",
        "{r}"
    );
    let (_, image) = answer(ureq::get(&format!("{url}/api/images/test/built:1")).call());
    assert_eq!(image["config"]["Cmd"], json!(["sh"]), "{image}");
    assert_eq!(image["config"]["ExposedPorts"], json!({"8080/tcp": {}}));
    assert_eq!(image["config"]["Labels"]["purpose"], "test");
    assert_eq!(image["meta"]["source"], "dockerfile");

    // The same text under the same tag reuses the build; the CLI builds too.
    let file = dir.path().join("Dockerfile");
    std::fs::write(&file, DOCKERFILE).unwrap();
    let started = std::time::Instant::now();
    let out = bandsox(
        &url,
        &[
            "image",
            "build",
            file.to_str().unwrap(),
            "--tag",
            "test/built:1",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let again: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["digest"], image["digest"]);
    assert!(
        started.elapsed().as_secs() < 5,
        "a cached build must not boot a VM"
    );
    let out = bandsox(
        &url,
        &[
            "image",
            "build",
            file.to_str().unwrap(),
            "--tag",
            "x",
            "--storage",
            "/tmp",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("needs the server"));

    let out = bandsox(&url, &["vm", "delete", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(vm_ids(&url).is_empty());
}

const STAGED: &str = r#"FROM bandsox/busybox AS build
WORKDIR /src
COPY folder ./folder
RUN cat folder/a.txt folder/sub/b.txt > /joined && ls folder > /listing && \
    cat /proc/sys/kernel/random/uuid > /stamp

FROM bandsox/busybox
ARG VERSION=0
COPY --from=build /joined /listing /stamp /out/
COPY --chown=nobody hello.txt /out/
COPY folder /app/
COPY ["with space.txt", "/out/"]
RUN echo "$VERSION" > /out/version && ls -A / > /out/root && ls -A /app > /out/app
"#;

#[test]
fn context_builds_with_auth() {
    let dir = TestRoot::new("bsxctx");
    let storage = dir.path().join("storage");
    let out = init(&storage);
    assert!(out.status.success(), "init: {}", text(&out.stderr));
    let key = common::auth_init(&storage).1;
    let bearer = format!("Bearer {key}");
    let port = free_port();
    let _server = start_server(&storage, port);
    let url = format!("http://127.0.0.1:{port}");
    let cli = |args: &[&str]| {
        std::process::Command::new(common::BIN)
            .args(args)
            .env("BANDSOX_URL", &url)
            .env("BANDSOX_API_KEY", &key)
            .env("HOME", dir.path())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let get = |path: &str| {
        answer(
            ureq::get(&format!("{url}{path}"))
                .set("Authorization", &bearer)
                .call(),
        )
    };

    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(ctx.join("folder/sub")).unwrap();
    std::fs::write(ctx.join("hello.txt"), "hello\n").unwrap();
    std::fs::write(ctx.join("with space.txt"), "spaced\n").unwrap();
    std::fs::write(ctx.join("folder/a.txt"), "a\n").unwrap();
    std::fs::write(ctx.join("folder/sub/b.txt"), "b\n").unwrap();
    std::fs::write(ctx.join("folder/skip.log"), "ignored\n").unwrap();
    std::fs::write(ctx.join("secret.env"), "TOKEN=x\n").unwrap();
    std::fs::write(ctx.join(".dockerignore"), "*.env\n**/*.log\n").unwrap();
    let dockerfile = dir.path().join("Staged.Dockerfile");
    std::fs::write(&dockerfile, STAGED).unwrap();
    let (df, c) = (dockerfile.to_str().unwrap(), ctx.to_str().unwrap());

    let out = cli(&[
        "build",
        "-f",
        df,
        c,
        "-t",
        "test/ctx:1",
        "--build-arg",
        "VERSION=7",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let image: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(image["reference"], "test/ctx:1");

    // A VM of the image runs `cmd`; its output.
    let run_in = |image: &str, cmd: &str| -> String {
        let (st, created) = answer(
            ureq::post(&format!("{url}/api/vms"))
                .set("Authorization", &bearer)
                .send_json(json!({ "image": image })),
        );
        assert_eq!(st, 200, "{created}");
        let id = created["id"].as_str().unwrap().to_owned();
        let (st, r) = answer(
            ureq::post(&format!("{url}/api/vms/{id}/exec"))
                .set("Authorization", &bearer)
                .send_json(json!({ "command": cmd })),
        );
        assert_eq!(st, 200, "{r}");
        let (st, _) = answer(
            ureq::delete(&format!("{url}/api/vms/{id}"))
                .set("Authorization", &bearer)
                .call(),
        );
        assert_eq!(st, 200);
        r["stdout"].as_str().unwrap().to_owned()
    };
    let out = run_in(
        "test/ctx:1",
        "cd /out && cat joined listing hello.txt 'with space.txt' version app; \
         stat -c %U hello.txt; grep -c -e secret.env -e bandsox root; \
         test -e /app/skip.log || echo no-log; cat stamp",
    );
    let (out, stamp) = out.split_at(out.len() - 37);
    assert_eq!(
        out,
        "a\nb\na.txt\nsub\nhello\nspaced\n7\na.txt\nsub\nnobody\n0\nno-log\n"
    );
    let stamp = stamp.to_owned();

    // Unchanged inputs reuse the build; a changed file builds again.
    let started = std::time::Instant::now();
    let out = cli(&[
        "build",
        "-f",
        df,
        c,
        "-t",
        "test/ctx:1",
        "--build-arg",
        "VERSION=7",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let again: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["digest"], image["digest"]);
    assert!(
        started.elapsed().as_secs() < 5,
        "a cached build must not boot a VM"
    );

    // A changed file: the steps before it come from the step cache (the first stage's RUN
    // does not run again), the COPY and what follows run. --force runs everything.
    std::fs::write(ctx.join("hello.txt"), "hello again\n").unwrap();
    let build = [
        "build",
        "-f",
        df,
        c,
        "-t",
        "test/ctx:1",
        "--build-arg",
        "VERSION=7",
    ];
    let out = cli(&build);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        run_in("test/ctx:1", "cat /out/stamp /out/hello.txt"),
        format!("{stamp}hello again\n")
    );
    let out = cli(&[&build[..], &["--force"]].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_ne!(
        run_in("test/ctx:1", "cat /out/stamp"),
        stamp,
        "--force used the cache"
    );
    // Cache entries are not user snapshots.
    let (_, snaps) = get("/api/snapshots");
    assert_eq!(
        snaps,
        json!([]),
        "the step cache shows in the snapshot list"
    );

    // Sources out of the context: refused, nothing left behind.
    let (_, images_before) = get("/api/images");
    std::fs::write(dir.path().join("outside"), "host secret").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", ctx.join("link")).unwrap();
    for (line, needle) in [
        ("COPY ../outside /x", "outside the build context"),
        ("COPY link /x", "symbolic link out of the build context"),
        ("COPY missing.txt /x", "no such file in the build context"),
        ("COPY secret.env /x", "excluded by .dockerignore"),
    ] {
        std::fs::write(&dockerfile, format!("FROM bandsox/busybox\n{line}\n")).unwrap();
        let out = cli(&["build", "-f", df, c, "-t", "test/bad:1"]);
        assert_eq!(out.status.code(), Some(1), "{line}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains(needle),
            "{line}: {}",
            text(&out.stderr)
        );
    }
    let (_, vms) = get("/api/vms");
    assert_eq!(vms, json!([]), "a failed build left a VM");
    let (_, images_after) = get("/api/images");
    assert_eq!(images_after, images_before, "a failed build left an image");

    // BandSox's form with a `context` part (a tar), and the same refusal without auth.
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o644);
    tar.append_data(&mut h, "f.txt", &b"hi\n"[..]).unwrap();
    let tar = tar.into_inner().unwrap();
    let boundary = "bsxctxboundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"dockerfile\"; filename=\"Dockerfile\"\r\n\r\n\
         FROM bandsox/busybox\nCOPY f.txt /f.txt\n\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"context\"; filename=\"c.tar\"\r\n\
         Content-Type: application/x-tar\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&tar);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let ctype = format!("multipart/form-data; boundary={boundary}");
    let (st, _) = answer(
        ureq::post(&format!("{url}/api/vms/from-dockerfile"))
            .set("Content-Type", &ctype)
            .send_bytes(&body),
    );
    assert_eq!(st, 401);
    let (st, created) = answer(
        ureq::post(&format!("{url}/api/vms/from-dockerfile"))
            .set("Authorization", &bearer)
            .set("Content-Type", &ctype)
            .send_bytes(&body),
    );
    assert_eq!(st, 200, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let (_, r) = answer(
        ureq::post(&format!("{url}/api/vms/{id}/exec"))
            .set("Authorization", &bearer)
            .send_json(json!({"command": "cat /f.txt"})),
    );
    assert_eq!(r["stdout"], "hi\n", "{r}");
}

/// `COPY --from` with a pattern, a `FROM scratch` stage with `ADD` of a local gzip tar and
/// `--chown` by names from the stage's own `/etc/passwd` and `/etc/group`, and setuid bits
/// kept from the context and from a `RUN` in an earlier stage, into a VM of the result.
#[test]
fn scratch_stage_archives_owners_patterns_and_setuid() {
    let dir = TestRoot::new("bsxscr");
    let storage = dir.path().join("storage");
    let out = init(&storage);
    assert!(out.status.success(), "init: {}", text(&out.stderr));
    let port = free_port();
    let _server = start_server(&storage, port);
    let url = format!("http://127.0.0.1:{port}");

    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1234:1234::/home:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(ctx.join("group"), "root:x:0:\nstaff:x:2345:app\n").unwrap();
    std::fs::write(ctx.join("hello.txt"), "hello\n").unwrap();
    let suid = ctx.join("suid.sh");
    std::fs::write(&suid, "#!/bin/sh\necho suid\n").unwrap();
    std::fs::set_permissions(&suid, std::os::unix::fs::PermissionsExt::from_mode(0o4755)).unwrap();
    // tools.tar.gz: bin/tool (owned 1234:2345, mode 0750) and etc/tool.conf.
    let mut tar = tar::Builder::new(Vec::new());
    for (path, body, mode) in [
        ("bin/tool", &b"tool v1\n"[..], 0o750),
        ("etc/tool.conf", b"x=1\n", 0o644),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(mode);
        h.set_uid(1234);
        h.set_gid(2345);
        tar.append_data(&mut h, path, body).unwrap();
    }
    std::fs::write(ctx.join("tools.tar"), tar.into_inner().unwrap()).unwrap();
    let gz = std::process::Command::new("gzip")
        .arg(ctx.join("tools.tar"))
        .status()
        .unwrap();
    assert!(gz.success());
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM bandsox/busybox AS base\n\
         RUN mkdir -p /out && echo one > /out/a.js && echo two > /out/b.js && echo no > /out/c.txt \
         && cp /bin/busybox /out/suidbin && chmod 4755 /out/suidbin\n\
         FROM scratch\n\
         COPY --from=base /bin /bin/\n\
         COPY passwd group /etc/\n\
         COPY --from=base /out/*.js /js/\n\
         COPY --from=base /out/suidbin /usr/local/bin/\n\
         ADD tools.tar.gz /opt/\n\
         COPY --chown=app:staff hello.txt /home/\n\
         COPY --chown=app suid.sh /usr/local/bin/\n",
    )
    .unwrap();
    let out = bandsox(
        &url,
        &[
            "build",
            ctx.to_str().unwrap(),
            "-t",
            "test/scratch:1",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    let (st, created) = answer(
        ureq::post(&format!("{url}/api/vms")).send_json(json!({ "image": "test/scratch:1" })),
    );
    assert_eq!(st, 200, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let (st, r) = exec(
        &url,
        &id,
        "ls /js | tr '\\n' ' '; echo; cat /opt/bin/tool /opt/etc/tool.conf; \
         stat -c '%n %u:%g %a' /opt/bin/tool /home/hello.txt /usr/local/bin/suid.sh /usr/local/bin/suidbin",
    );
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        r["stdout"].as_str().unwrap(),
        "a.js b.js \ntool v1\nx=1\n\
         /opt/bin/tool 1234:2345 750\n\
         /home/hello.txt 1234:2345 644\n\
         /usr/local/bin/suid.sh 1234:1234 4755\n\
         /usr/local/bin/suidbin 0:0 4755\n",
        "{r}"
    );
    let (st, _) = answer(ureq::delete(&format!("{url}/api/vms/{id}")).call());
    assert_eq!(st, 200);

    // Names the stage's files do not hold, or no /etc/passwd at all: refused, nothing left.
    let (_, images_before) = answer(ureq::get(&format!("{url}/api/images")).call());
    for (df, needle) in [
        (
            "FROM scratch\nCOPY passwd group /etc/\nCOPY --chown=ghost hello.txt /x\n",
            "no user `ghost`",
        ),
        (
            "FROM scratch\nCOPY --chown=app hello.txt /x\n",
            "no /etc/passwd",
        ),
        (
            "FROM bandsox/busybox AS b\nFROM scratch\nCOPY --from=b /*.txt /x/\n",
            "folder before its first wildcard",
        ),
    ] {
        std::fs::write(ctx.join("Dockerfile"), df).unwrap();
        let out = bandsox(
            &url,
            &["build", ctx.to_str().unwrap(), "-t", "test/bad-scratch:1"],
        );
        assert_eq!(out.status.code(), Some(1), "{df}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains(needle),
            "{df}: {}",
            text(&out.stderr)
        );
    }
    let (_, images_after) = answer(ureq::get(&format!("{url}/api/images")).call());
    assert_eq!(images_after, images_before, "a failed build left an image");
    assert_eq!(
        vm_ids(&url),
        Vec::<String>::new(),
        "a failed build left a VM"
    );
}
