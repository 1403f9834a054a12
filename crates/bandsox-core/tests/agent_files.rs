//! The file API inside a real VM (QEMU/TCG): every operation, bad input with nothing changed,
//! binary data with every byte value, 16+ concurrent operations, and a 200 MiB upload into
//! `/tmp` of a 128 MiB VM (`/tmp` is on the disk, `/dev/shm` in RAM) and its download, checked
//! with SHA-256 on both sides. One VM for the whole file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bandsox_core::guest::WriteOptions;
use bandsox_core::{CoreError, CreateVm, Manager, ManagerConfig};
use bandsox_protocol::{ErrorCode, ExecRequest, FileReadTextRequest};
use common::fresh_storage;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

fn code(r: Result<impl std::fmt::Debug, CoreError>) -> ErrorCode {
    match r {
        Err(CoreError::Guest(e)) => e.code,
        other => panic!("expected a guest error, got {other:?}"),
    }
}

const P: WriteOptions = WriteOptions {
    mode: None,
    append: false,
    create_parents: true,
};

async fn sh(mgr: &Manager, id: &str, cmd: &str) -> String {
    let o = mgr
        .exec(
            id,
            ExecRequest {
                command: Some(cmd.into()),
                timeout_ms: Some(120_000),
                ..Default::default()
            },
            None,
            1 << 20,
        )
        .await
        .unwrap();
    String::from_utf8(o.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_in_a_real_vm() {
    let ts = fresh_storage();
    let mgr = Manager::open(ManagerConfig::new(ts.storage.clone()))
        .await
        .unwrap();
    let mut req = CreateVm::new("bandsox/busybox");
    req.mem_mib = 128;
    let vm = mgr.create_vm(req).await.unwrap();
    let id = vm.id.clone();
    let t = Instant::now();
    basic_operations(&mgr, &id).await;
    eprintln!("basic: {:?}", t.elapsed());
    bad_input_changes_nothing(&mgr, &id).await;
    eprintln!("bad input: {:?}", t.elapsed());
    concurrent_operations(&mgr, &id).await;
    eprintln!("concurrent: {:?}", t.elapsed());
    large_file_round_trip(&mgr, &id).await;
    eprintln!("large: {:?}", t.elapsed());
    mgr.delete_vm(&id).await.unwrap();
}

async fn basic_operations(mgr: &Manager, id: &str) {
    // Every byte value, through a missing parent (created).
    let all: Vec<u8> = (0..=255u8).cycle().take(256 * 300).collect();
    assert_eq!(
        mgr.write_file(id, "/work/a/b/bin.dat", &all, P)
            .await
            .unwrap(),
        all.len() as u64
    );
    let c = mgr
        .read_file(id, "/work/a/b/bin.dat", 0, None)
        .await
        .unwrap();
    assert_eq!(c.bytes, all);
    assert_eq!(
        (c.size, c.truncated, c.mime.as_deref()),
        (all.len() as u64, false, None)
    );
    // Offset and cap.
    let c = mgr
        .read_file(id, "/work/a/b/bin.dat", 10, Some(100))
        .await
        .unwrap();
    assert_eq!(c.bytes, &all[10..110]);
    assert!(c.truncated);

    // Mode bits; append.
    let opts = WriteOptions {
        mode: Some(0o751),
        ..P
    };
    mgr.write_file(id, "/work/x.sh", b"echo one\n", opts)
        .await
        .unwrap();
    let append = WriteOptions { append: true, ..P };
    mgr.write_file(id, "/work/x.sh", b"echo two\n", append)
        .await
        .unwrap();
    assert_eq!(sh(mgr, id, "/work/x.sh").await, "one\ntwo\n");
    let st = mgr.stat(id, "/work/x.sh").await.unwrap().unwrap();
    assert_eq!(st.mode & 0o7777, 0o751);
    assert!(st.is_file && !st.is_dir);
    assert_eq!(st.size, 18);
    // A replacing write without mode keeps the existing mode.
    mgr.write_file(id, "/work/x.sh", b"echo three\n", P)
        .await
        .unwrap();
    assert_eq!(
        mgr.stat(id, "/work/x.sh").await.unwrap().unwrap().mode & 0o7777,
        0o751
    );

    // Text windows, numbered once.
    let text: String = (1..=10).map(|i| format!("line {i}\n")).collect();
    mgr.write_file(id, "/work/t.txt", text.as_bytes(), P)
        .await
        .unwrap();
    let w = mgr
        .read_text(
            id,
            FileReadTextRequest {
                path: "/work/t.txt".into(),
                offset_lines: 2,
                limit_lines: 3,
                line_numbers: true,
                max_bytes: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(w.content, "3\tline 3\n4\tline 4\n5\tline 5\n");
    assert_eq!((w.total_lines, w.truncated), (10, false));
    let w = mgr
        .read_text(
            id,
            FileReadTextRequest {
                path: "/work/t.txt".into(),
                max_bytes: Some(20),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(w.content, "line 1\nline 2\n");
    assert!(w.truncated);
    // Non-UTF-8 text becomes U+FFFD.
    mgr.write_file(id, "/work/bad.txt", b"a\xffb\n", P)
        .await
        .unwrap();
    let w = mgr
        .read_text(
            id,
            FileReadTextRequest {
                path: "/work/bad.txt".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(w.content, "a\u{fffd}b\n");

    // Images are recognised by content, whatever the name.
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
    mgr.write_file(id, "/work/picture.bin", png, P)
        .await
        .unwrap();
    let c = mgr
        .read_file(id, "/work/picture.bin", 0, None)
        .await
        .unwrap();
    assert_eq!(c.mime.as_deref(), Some("image/png"));

    // list, stat/exists, mkdir -p, rename, remove.
    mgr.mkdir(id, "/work/d/e/f", true, None).await.unwrap();
    mgr.mkdir(id, "/work/d/e/f", true, None).await.unwrap();
    let (entries, truncated) = mgr.list_dir(id, "/work").await.unwrap();
    assert!(!truncated);
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["a", "bad.txt", "d", "picture.bin", "t.txt", "x.sh"]);
    let d = entries.iter().find(|e| e.name == "d").unwrap();
    assert!(d.is_dir && !d.is_file && d.path == "/work/d" && d.mtime > 0);
    assert!(mgr.stat(id, "/work/nope").await.unwrap().is_none());
    assert!(!mgr.exists(id, "/work/nope/deeper").await.unwrap());
    assert!(mgr.exists(id, "/work/d/e/f").await.unwrap());
    mgr.rename(id, "/work/t.txt", "/work/d/t2.txt")
        .await
        .unwrap();
    assert!(!mgr.exists(id, "/work/t.txt").await.unwrap());
    assert_eq!(
        mgr.read_file(id, "/work/d/t2.txt", 0, None)
            .await
            .unwrap()
            .bytes,
        text.as_bytes()
    );
    mgr.remove(id, "/work/d", true).await.unwrap();
    assert!(!mgr.exists(id, "/work/d").await.unwrap());

    // edit: exactly one match.
    mgr.write_file(id, "/work/e.txt", b"alpha beta beta gamma", P)
        .await
        .unwrap();
    mgr.edit_file(id, "/work/e.txt", "alpha", "ALPHA")
        .await
        .unwrap();
    assert_eq!(
        code(mgr.edit_file(id, "/work/e.txt", "beta", "B").await),
        ErrorCode::MultipleMatches
    );
    assert_eq!(
        code(mgr.edit_file(id, "/work/e.txt", "delta", "D").await),
        ErrorCode::NoMatch
    );
    assert_eq!(
        mgr.read_file(id, "/work/e.txt", 0, None)
            .await
            .unwrap()
            .bytes,
        b"ALPHA beta beta gamma"
    );

    // Batch write with modes, one round trip.
    let files: Vec<(String, Vec<u8>, Option<u32>)> = (0..50)
        .map(|i| {
            (
                format!("/work/batch/{}/f{i}", i % 3),
                vec![i as u8; i * 100],
                Some(if i % 2 == 0 { 0o600 } else { 0o644 }),
            )
        })
        .collect();
    assert_eq!(mgr.write_files(id, &files, true).await.unwrap(), 50);
    for (path, bytes, mode) in [&files[0], &files[7], &files[49]] {
        let c = mgr.read_file(id, path, 0, None).await.unwrap();
        assert_eq!(&c.bytes, bytes);
        let st = mgr.stat(id, path).await.unwrap().unwrap();
        assert_eq!(Some(st.mode & 0o777), *mode);
    }
}

async fn bad_input_changes_nothing(mgr: &Manager, id: &str) {
    mgr.write_file(id, "/work/keep.txt", b"original", P)
        .await
        .unwrap();
    // Relative paths are refused.
    assert_eq!(
        code(mgr.read_file(id, "work/keep.txt", 0, None).await),
        ErrorCode::InvalidPath
    );
    assert_eq!(
        code(mgr.write_file(id, "keep.txt", b"x", P).await),
        ErrorCode::InvalidPath
    );
    // Reading a directory.
    assert_eq!(
        code(mgr.read_file(id, "/work", 0, None).await),
        ErrorCode::IsADirectory
    );
    // Writing into a missing parent without create_parents.
    let no_parents = WriteOptions {
        create_parents: false,
        ..P
    };
    assert_eq!(
        code(
            mgr.write_file(id, "/work/missing/f", b"x", no_parents)
                .await
        ),
        ErrorCode::NotFound
    );
    assert!(!mgr.exists(id, "/work/missing").await.unwrap());
    // Writing over a directory.
    assert_eq!(
        code(mgr.write_file(id, "/work", b"x", P).await),
        ErrorCode::IsADirectory
    );
    // Missing files; non-empty directory without recursive; mkdir of an existing path.
    assert_eq!(
        code(mgr.read_file(id, "/work/none", 0, None).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(mgr.remove(id, "/work", false).await),
        ErrorCode::NotEmpty
    );
    assert_eq!(
        code(mgr.mkdir(id, "/work", false, None).await),
        ErrorCode::AlreadyExists
    );
    assert_eq!(
        code(mgr.list_dir(id, "/work/keep.txt").await),
        ErrorCode::NotADirectory
    );
    assert_eq!(
        code(mgr.rename(id, "/work/none", "/work/other").await),
        ErrorCode::NotFound
    );
    // A batch with one bad path writes nothing.
    let files = vec![
        ("/work/b1".to_owned(), b"1".to_vec(), None),
        ("relative".to_owned(), b"2".to_vec(), None),
    ];
    assert_eq!(
        code(mgr.write_files(id, &files, true).await),
        ErrorCode::InvalidPath
    );
    assert!(!mgr.exists(id, "/work/b1").await.unwrap());
    assert_eq!(
        mgr.read_file(id, "/work/keep.txt", 0, None)
            .await
            .unwrap()
            .bytes,
        b"original"
    );
    // No temporary files are left behind.
    let (entries, _) = mgr.list_dir(id, "/work").await.unwrap();
    assert!(
        entries.iter().all(|e| !e.name.contains(".bsx-")),
        "{entries:?}"
    );
}

async fn concurrent_operations(mgr: &Arc<Manager>, id: &str) {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..24u32 {
        let mgr = Arc::clone(mgr);
        let id = id.to_owned();
        set.spawn(async move {
            let data: Vec<u8> = (0..200_000u32)
                .map(|j| (j.wrapping_mul(i + 7) >> 3) as u8)
                .collect();
            let path = format!("/work/conc/{i}.bin");
            mgr.write_file(&id, &path, &data, P).await.unwrap();
            let back = mgr.read_file(&id, &path, 0, None).await.unwrap();
            assert_eq!(back.bytes, data, "file {i}");
            let o = mgr
                .exec(
                    &id,
                    ExecRequest {
                        argv: Some(vec!["echo".into(), format!("task{i}")]),
                        ..Default::default()
                    },
                    None,
                    1 << 10,
                )
                .await
                .unwrap();
            assert_eq!(o.stdout, format!("task{i}\n").as_bytes());
        });
    }
    let mut done = 0;
    while let Some(r) = set.join_next().await {
        r.unwrap();
        done += 1;
    }
    assert_eq!(done, 24);
}

/// Pseudo-random bytes of a given length, hashed as they are produced.
struct Source {
    left: u64,
    state: u64,
    hasher: Sha256,
}

impl AsyncRead for Source {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = (buf.remaining() as u64).min(self.left).min(64 << 10) as usize;
        let mut chunk = vec![0u8; n];
        for b in chunk.chunks_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            let bytes = self.state.to_le_bytes();
            b.copy_from_slice(&bytes[..b.len()]);
        }
        self.hasher.update(&chunk);
        self.left -= n as u64;
        buf.put_slice(&chunk);
        Poll::Ready(Ok(()))
    }
}

/// Hashes what is written, keeping nothing.
struct Sink(Sha256, u64);

impl AsyncWrite for Sink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.update(buf);
        self.1 += buf.len() as u64;
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

async fn large_file_round_trip(mgr: &Manager, id: &str) {
    const SIZE: u64 = 200 << 20;
    // `/tmp` is the VM's disk (as in a container), `/dev/shm` its RAM.
    assert_eq!(
        sh(
            mgr,
            id,
            "grep -c ' /tmp ' /proc/mounts; grep -c ' /dev/shm tmpfs ' /proc/mounts; stat -c %a /tmp"
        )
        .await,
        "0\n1\n1777\n"
    );
    let mut src = Source {
        left: SIZE,
        state: 0x9e37_79b9_7f4a_7c15,
        hasher: Sha256::new(),
    };
    let t = Instant::now();
    let n = mgr.upload(id, "/tmp/big.bin", &mut src, P).await.unwrap();
    let up = t.elapsed();
    assert_eq!(n, SIZE);
    let want = hex::encode(src.hasher.finalize());
    let guest = sh(mgr, id, "sha256sum /tmp/big.bin").await;
    assert_eq!(guest.split_whitespace().next(), Some(want.as_str()));
    let mut sink = Sink(Sha256::new(), 0);
    let t = Instant::now();
    assert_eq!(
        mgr.download(id, "/tmp/big.bin", &mut sink).await.unwrap(),
        SIZE
    );
    let down = t.elapsed();
    assert_eq!(sink.1, SIZE);
    assert_eq!(hex::encode(sink.0.finalize()), want);
    eprintln!(
        "200 MiB: upload {:.1} MiB/s, download {:.1} MiB/s",
        200.0 / up.as_secs_f64(),
        200.0 / down.as_secs_f64()
    );
}
