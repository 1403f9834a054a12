//! Server limits with a real server and VM: per-VM size caps (422), the VM count (429
//! `limit_reached`, nothing created), and concurrent operations per VM (429
//! `too_many_operations` with `Retry-After`, the others unaffected).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

mod common;

use common::{answer, free_port, init, start_server_with, TestRoot};
use serde_json::json;

#[test]
fn size_count_and_concurrency_limits() {
    let root = TestRoot::new("bsxlimits");
    assert!(init(root.path()).status.success());
    let port = free_port();
    let flags = [
        "--max-vcpu",
        "2",
        "--max-mem-mib",
        "256",
        "--max-vms",
        "1",
        "--max-ops-per-vm",
        "2",
    ];
    let _server = start_server_with(root.path(), port, &flags);
    let base = format!("http://127.0.0.1:{port}/api");
    let create = |body| answer(ureq::post(&format!("{base}/vms")).send_json(body));

    // Sizes beyond the server's limits: 422 naming the limit, nothing recorded.
    let (st, p) = create(json!({"image": "bandsox/busybox", "vcpu": 3}));
    assert_eq!(
        (st, p["code"].as_str()),
        (422, Some("invalid_input")),
        "{p}"
    );
    assert!(p["detail"].as_str().unwrap().contains("1 to 2"), "{p}");
    let (st, p) = create(json!({"image": "bandsox/busybox", "mem_mib": 512}));
    assert_eq!(st, 422, "{p}");

    // One VM is allowed; the second is refused and leaves no record.
    let (st, vm) = create(json!({"image": "bandsox/busybox"}));
    assert_eq!(st, 200, "{vm}");
    let id = vm["id"].as_str().unwrap().to_owned();
    let (st, p) = create(json!({"image": "bandsox/busybox"}));
    assert_eq!(
        (st, p["code"].as_str()),
        (429, Some("limit_reached")),
        "{p}"
    );
    assert!(p["hint"].as_str().unwrap().contains("--max-vms"), "{p}");
    let (_, list) = answer(ureq::get(&format!("{base}/vms")).call());
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");

    // Three slow operations at once on a VM that allows two: exactly one is refused at once,
    // also when one spells the id with percent escapes (the limit counts the VM, not the text).
    let exec = format!("{base}/vms/{id}/exec");
    let spelled = format!("{base}/vms/{}/exec", id.replace('-', "%2D"));
    let calls: Vec<_> = (0..3)
        .map(|i| {
            let exec = if i == 1 {
                spelled.clone()
            } else {
                exec.clone()
            };
            std::thread::spawn(move || {
                let r = ureq::post(&exec).send_json(json!({"command": "sleep 2; echo done"}));
                let retry = match &r {
                    Err(ureq::Error::Status(_, resp)) => {
                        resp.header("retry-after").map(str::to_owned)
                    }
                    _ => None,
                };
                (answer(r), retry)
            })
        })
        .collect();
    let results: Vec<_> = calls.into_iter().map(|t| t.join().unwrap()).collect();
    let refused: Vec<_> = results.iter().filter(|((st, _), _)| *st == 429).collect();
    let done: Vec<_> = results.iter().filter(|((st, _), _)| *st == 200).collect();
    assert_eq!((refused.len(), done.len()), (1, 2), "{results:?}");
    let ((_, p), retry) = refused[0];
    assert_eq!(p["code"], "too_many_operations", "{p}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert!(done.iter().all(|((_, b), _)| b["stdout"] == "done\n"));

    // Permits come back: the next operation runs.
    let (st, out) = answer(ureq::post(&exec).send_json(json!({"command": "echo again"})));
    assert_eq!(
        (st, out["stdout"].as_str()),
        (200, Some("again\n")),
        "{out}"
    );

    let (st, _) = answer(ureq::delete(&format!("{base}/vms/{id}")).call());
    assert_eq!(st, 200);
}
