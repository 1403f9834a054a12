//! `GET /api/events`: VM status changes as server-sent events, for the dashboard and any
//! client that wants to follow VMs without polling the list.
//!
//! A comment line opens the stream, then `snapshot` (data: every VM, as `GET /api/vms` lists
//! them), so a client can start from the stream alone and resynchronises on every reconnect.
//! After that the server compares the VM table once a second and sends what changed: `vm` (a VM
//! appeared or its status, name, metadata or expiry changed; data: [`VmEvent`] with the VM) and
//! `vm_deleted` (data: [`VmEvent`] with the id). The stream ends when the credential it was
//! opened with is revoked.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Extension;
use bandsox_api::VmEvent;
use futures_util::Stream;

use super::AppState;
use crate::auth::Credential;

/// How often the VM table is compared.
const TICK: Duration = Duration::from_secs(1);

/// `GET /api/events`.
#[utoipa::path(
    get,
    path = "/api/events",
    tag = "vms",
    summary = "VM changes as server-sent events (`snapshot` first, then `vm`, `vm_deleted`)",
    operation_id = "vms_events",
    responses((status = 200, description = "a `text/event-stream`: first `event: snapshot` (data: the list of every VM, as `GET /api/vms`), then `event: vm` / `event: vm_deleted` (data: a VmEvent) as VMs change", body = VmEvent, content_type = "text/event-stream"))
)]
pub async fn events(
    State(s): State<AppState>,
    cred: Option<Extension<Credential>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let cred = cred.map(|Extension(c)| c);
    let stream = async_stream(s, cred);
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// What decides whether a VM changed.
type Seen = (String, String, String, Option<u64>, u64);

fn seen_of(vm: &bandsox_core::VmRecord) -> Seen {
    (
        vm.status.to_string(),
        vm.name.clone(),
        vm.metadata.to_string(),
        vm.expires_at.map(|e| e as u64),
        vm.updated_at as u64,
    )
}

fn async_stream(
    s: AppState,
    cred: Option<Credential>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(256);
    tokio::spawn(async move {
        // A comment first, so a client knows at once that the feed is open.
        if tx
            .send(Event::default().comment("bandsox events"))
            .await
            .is_err()
        {
            return;
        }
        let mut seen: HashMap<String, Seen> = HashMap::new();
        let mut first = true;
        let mut tick = tokio::time::interval(TICK);
        loop {
            tick.tick().await;
            if tx.is_closed() {
                return;
            }
            if let Some(c) = &cred {
                if matches!(c, Credential::Token(_)) && !c.still_valid(&s.manager) {
                    return;
                }
            }
            let Ok(vms) = s.manager.list_vms() else {
                continue;
            };
            let mut now: HashMap<String, Seen> = HashMap::with_capacity(vms.len());
            let mut out = Vec::new();
            if std::mem::take(&mut first) {
                let mut all = Vec::with_capacity(vms.len());
                for vm in vms {
                    now.insert(vm.id.clone(), seen_of(&vm));
                    all.push(super::vms::vm_info(&s.manager, vm));
                }
                seen = now;
                let Ok(data) = serde_json::to_string(&all) else {
                    continue;
                };
                if tx
                    .send(Event::default().event("snapshot").data(data))
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
            for vm in vms {
                let key = seen_of(&vm);
                let id = vm.id.clone();
                if seen.get(&id) != Some(&key) {
                    let info = super::vms::vm_info(&s.manager, vm);
                    out.push((
                        "vm",
                        VmEvent {
                            kind: "vm".into(),
                            id: id.clone(),
                            vm: Some(info),
                        },
                    ));
                }
                now.insert(id, key);
            }
            for id in seen.keys() {
                if !now.contains_key(id) {
                    out.push((
                        "vm_deleted",
                        VmEvent {
                            kind: "vm_deleted".into(),
                            id: id.clone(),
                            vm: None,
                        },
                    ));
                }
            }
            seen = now;
            for (name, ev) in out {
                let Ok(data) = serde_json::to_string(&ev) else {
                    continue;
                };
                if tx
                    .send(Event::default().event(name).data(data))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    futures_util::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
    )
}
