//! An etcd v3 client over the JSON gateway (`POST /v3/...`, served by etcd 3.4 and later).
//!
//! Keys and values travel base64-encoded; 64-bit numbers arrive as JSON strings. A request
//! goes to the member that answered last; when it cannot be reached, times out or answers
//! "unavailable", the next member is tried, until [`Etcd::deadline`] has passed: then the
//! answer is [`ClusterError::Unavailable`]. Writes may therefore reach etcd more than once;
//! callers make them idempotent (a put of the same value, a transaction guarded by a
//! compare that a second run fails and whose effect the caller recognises).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::ClusterError;

/// How long a request may keep trying members before it is [`ClusterError::Unavailable`].
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(3);
/// The longest one attempt against one member may take.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1200);

/// A client of one etcd cluster.
#[derive(Debug)]
pub struct Etcd {
    members: Vec<String>,
    http: reqwest::Client,
    /// Index of the member to try first (the one that answered last).
    next: AtomicUsize,
    deadline: Duration,
}

/// One key-value pair as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub lease: i64,
}

/// How a [`Compare`] compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareResult {
    Equal,
    Greater,
    Less,
    NotEqual,
}

impl CompareResult {
    fn as_str(self) -> &'static str {
        match self {
            Self::Equal => "EQUAL",
            Self::Greater => "GREATER",
            Self::Less => "LESS",
            Self::NotEqual => "NOT_EQUAL",
        }
    }
}

/// A guard of a transaction.
#[derive(Debug, Clone)]
pub enum Compare {
    /// The key's creation revision (0: the key does not exist).
    CreateRevision(String, CompareResult, i64),
    /// The key's last modification revision (0: the key does not exist).
    ModRevision(String, CompareResult, i64),
    /// The key's value.
    Value(String, CompareResult, Vec<u8>),
}

/// An operation of a transaction.
#[derive(Debug, Clone)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        lease: Option<i64>,
    },
    Delete(String),
    Get(String),
    /// Every key starting with the prefix.
    GetPrefix(String),
}

/// The outcome of a transaction: which branch ran, and what its `Get`s read (one list per
/// operation, empty for puts and deletes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResponse {
    pub succeeded: bool,
    pub revision: i64,
    pub reads: Vec<Vec<Kv>>,
}

fn b64(s: impl AsRef<[u8]>) -> String {
    B64.encode(s)
}

/// The `range_end` that makes a range cover every key starting with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff (or the prefix was empty): the range reaches the end of the keys.
    vec![0]
}

/// etcd's JSON numbers: int64 fields are strings, absent when zero.
fn int(v: &Value, field: &str) -> i64 {
    match v.get(field) {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn decode_b64(v: &Value, field: &str) -> Result<Vec<u8>, ClusterError> {
    match v.get(field).and_then(Value::as_str) {
        None => Ok(Vec::new()),
        Some(s) => B64.decode(s).map_err(|e| ClusterError::Decode {
            what: "an etcd key or value",
            detail: e.to_string(),
        }),
    }
}

/// The key-values of a range answer (`kvs` is absent when nothing matched).
pub fn parse_kvs(range: &Value) -> Result<Vec<Kv>, ClusterError> {
    let Some(kvs) = range.get("kvs").and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    kvs.iter()
        .map(|kv| {
            let key =
                String::from_utf8(decode_b64(kv, "key")?).map_err(|e| ClusterError::Decode {
                    what: "an etcd key",
                    detail: e.to_string(),
                })?;
            Ok(Kv {
                key,
                value: decode_b64(kv, "value")?,
                create_revision: int(kv, "create_revision"),
                mod_revision: int(kv, "mod_revision"),
                lease: int(kv, "lease"),
            })
        })
        .collect()
}

fn header_revision(v: &Value) -> i64 {
    v.get("header").map_or(0, |h| int(h, "revision"))
}

/// The JSON of one transaction.
pub fn txn_body(compare: &[Compare], success: &[Op], failure: &[Op]) -> Value {
    let compare: Vec<Value> = compare
        .iter()
        .map(|c| match c {
            Compare::CreateRevision(k, r, rev) => json!({
                "key": b64(k), "target": "CREATE", "result": r.as_str(),
                "create_revision": rev.to_string(),
            }),
            Compare::ModRevision(k, r, rev) => json!({
                "key": b64(k), "target": "MOD", "result": r.as_str(),
                "mod_revision": rev.to_string(),
            }),
            Compare::Value(k, r, v) => json!({
                "key": b64(k), "target": "VALUE", "result": r.as_str(), "value": b64(v),
            }),
        })
        .collect();
    let ops = |ops: &[Op]| -> Vec<Value> {
        ops.iter()
            .map(|op| match op {
                Op::Put { key, value, lease } => {
                    let mut put = json!({"key": b64(key), "value": b64(value)});
                    if let Some(l) = lease {
                        put["lease"] = json!(l.to_string());
                    }
                    json!({ "request_put": put })
                }
                Op::Delete(k) => json!({"request_delete_range": {"key": b64(k)}}),
                Op::Get(k) => json!({"request_range": {"key": b64(k)}}),
                Op::GetPrefix(p) => json!({"request_range": {
                    "key": b64(p), "range_end": b64(prefix_end(p)),
                }}),
            })
            .collect()
    };
    json!({"compare": compare, "success": ops(success), "failure": ops(failure)})
}

/// The parsed answer of a transaction.
pub fn parse_txn(v: &Value) -> Result<TxnResponse, ClusterError> {
    let succeeded = v.get("succeeded").and_then(Value::as_bool).unwrap_or(false);
    let mut reads = Vec::new();
    for r in v
        .get("responses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match r.get("response_range") {
            Some(range) => reads.push(parse_kvs(range)?),
            None => reads.push(Vec::new()),
        }
    }
    Ok(TxnResponse {
        succeeded,
        revision: header_revision(v),
        reads,
    })
}

/// Whether an etcd error answer may succeed on another member or a little later: gRPC
/// codes Unknown (2, "context deadline exceeded"), DeadlineExceeded (4), Unavailable (14).
fn retryable(code: i64) -> bool {
    matches!(code, 2 | 4 | 14)
}

/// Checks `--cluster`: a comma-separated list of `http://host:port` member URLs.
pub fn parse_members(list: &str) -> Result<Vec<String>, ClusterError> {
    let members: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(|m| m.trim_end_matches('/').to_owned())
        .collect();
    if members.is_empty() {
        return Err(ClusterError::Invalid(
            "--cluster names no etcd member; pass e.g. http://127.0.0.1:2379,http://127.0.0.1:22379".into(),
        ));
    }
    for m in &members {
        let rest = m.strip_prefix("http://").ok_or_else(|| {
            ClusterError::Invalid(format!("--cluster member `{m}` is not an http:// URL"))
        })?;
        if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
            return Err(ClusterError::Invalid(format!(
                "--cluster member `{m}` must be http://host:port without a path or credentials"
            )));
        }
    }
    Ok(members)
}

impl Etcd {
    /// A client of the members in `list` (see [`parse_members`]).
    pub fn new(list: &str) -> Result<Self, ClusterError> {
        let members = parse_members(list)?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .no_proxy()
            .build()
            .map_err(|e| ClusterError::Invalid(format!("cannot build an HTTP client: {e}")))?;
        Ok(Self {
            members,
            http,
            next: AtomicUsize::new(0),
            deadline: DEFAULT_DEADLINE,
        })
    }

    /// Changes how long a request keeps trying members.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// How long a request keeps trying members.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// The member URLs.
    pub fn members(&self) -> &[String] {
        &self.members
    }

    /// Posts `body` to `path` (e.g. `/v3/kv/range`) on the first member that answers.
    pub async fn call(&self, path: &str, body: &Value) -> Result<Value, ClusterError> {
        let start = Instant::now();
        let n = self.members.len();
        let first = self.next.load(Ordering::Relaxed) % n;
        let mut last_error = String::from("no member was tried");
        let mut attempt = 0usize;
        loop {
            let elapsed = start.elapsed();
            if elapsed >= self.deadline {
                return Err(ClusterError::Unavailable {
                    detail: format!(
                        "no etcd member answered within {} ms (last error: {last_error})",
                        self.deadline.as_millis()
                    ),
                });
            }
            if attempt > 0 && attempt.is_multiple_of(n) {
                // Every member failed once: wait a little before the next round, so
                // refused connections do not spin.
                tokio::time::sleep(Duration::from_millis(100).min(self.deadline - elapsed)).await;
            }
            let idx = (first + attempt) % n;
            attempt += 1;
            let remaining = self.deadline.saturating_sub(start.elapsed());
            if remaining.is_zero() {
                continue;
            }
            let timeout = remaining.min(ATTEMPT_TIMEOUT);
            let url = format!("{}{path}", self.members[idx]);
            let sent = self
                .http
                .post(&url)
                .json(body)
                .timeout(timeout)
                .send()
                .await;
            let resp = match sent {
                Ok(r) => r,
                Err(e) => {
                    last_error = format!("{}: {}", self.members[idx], short(&e));
                    tracing::debug!(member = %self.members[idx], error = %e, "etcd member did not answer");
                    continue;
                }
            };
            let status = resp.status();
            let value: Value = match resp.json().await {
                Ok(v) => v,
                Err(e) => {
                    last_error = format!("{}: unreadable answer: {}", self.members[idx], short(&e));
                    continue;
                }
            };
            if let Some(message) = value.get("error").and_then(Value::as_str) {
                let code = int(&value, "code");
                if retryable(code) || status.is_server_error() && code == 0 {
                    last_error = format!("{}: {message}", self.members[idx]);
                    continue;
                }
                return Err(ClusterError::Etcd {
                    code,
                    message: message.to_owned(),
                });
            }
            self.next.store(idx, Ordering::Relaxed);
            return Ok(value);
        }
    }

    /// The value of `key`, if it exists.
    pub async fn get(&self, key: &str) -> Result<Option<Kv>, ClusterError> {
        let v = self.call("/v3/kv/range", &json!({"key": b64(key)})).await?;
        Ok(parse_kvs(&v)?.into_iter().next())
    }

    /// Every key under `prefix`, sorted by key, and the store revision they were read at.
    pub async fn list(&self, prefix: &str) -> Result<(Vec<Kv>, i64), ClusterError> {
        let body = json!({"key": b64(prefix), "range_end": b64(prefix_end(prefix))});
        let v = self.call("/v3/kv/range", &body).await?;
        Ok((parse_kvs(&v)?, header_revision(&v)))
    }

    /// Sets `key` (under `lease`, when given); returns the new store revision.
    pub async fn put(
        &self,
        key: &str,
        value: &[u8],
        lease: Option<i64>,
    ) -> Result<i64, ClusterError> {
        let mut body = json!({"key": b64(key), "value": b64(value)});
        if let Some(l) = lease {
            body["lease"] = json!(l.to_string());
        }
        let v = self.call("/v3/kv/put", &body).await?;
        Ok(header_revision(&v))
    }

    /// Removes `key` (nothing happens when it does not exist).
    pub async fn delete(&self, key: &str) -> Result<(), ClusterError> {
        self.call("/v3/kv/deleterange", &json!({"key": b64(key)}))
            .await?;
        Ok(())
    }

    /// Runs `success` if every `compare` holds, else `failure`, atomically.
    pub async fn txn(
        &self,
        compare: &[Compare],
        success: &[Op],
        failure: &[Op],
    ) -> Result<TxnResponse, ClusterError> {
        let v = self
            .call("/v3/kv/txn", &txn_body(compare, success, failure))
            .await?;
        parse_txn(&v)
    }

    /// A new lease of `ttl_s` seconds; returns its id.
    pub async fn grant(&self, ttl_s: u64) -> Result<i64, ClusterError> {
        let v = self
            .call("/v3/lease/grant", &json!({"TTL": ttl_s.to_string()}))
            .await?;
        match int(&v, "ID") {
            0 => Err(ClusterError::Decode {
                what: "a lease grant",
                detail: format!("no lease id in {v}"),
            }),
            id => Ok(id),
        }
    }

    /// Renews lease `id`; returns its new TTL in seconds, or `None` when the lease has
    /// expired (or never existed).
    pub async fn keep_alive(&self, id: i64) -> Result<Option<i64>, ClusterError> {
        let v = self
            .call("/v3/lease/keepalive", &json!({"ID": id.to_string()}))
            .await?;
        let result = v.get("result").unwrap_or(&v);
        Ok(match int(result, "TTL") {
            ttl if ttl > 0 => Some(ttl),
            _ => None,
        })
    }

    /// Ends lease `id` now: its keys are deleted.
    pub async fn revoke(&self, id: i64) -> Result<(), ClusterError> {
        match self
            .call("/v3/lease/revoke", &json!({"ID": id.to_string()}))
            .await
        {
            Ok(_) => Ok(()),
            // Already gone.
            Err(ClusterError::Etcd { code: 5, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// An error of reqwest in one line, with its cause (reqwest's Display omits it).
fn short(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end("/bandsox/nodes/"), b"/bandsox/nodes0".to_vec());
        assert_eq!(prefix_end("a"), b"b".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }

    #[test]
    fn members_must_be_plain_http_urls() {
        assert_eq!(
            parse_members("http://127.0.0.1:2379, http://127.0.0.1:22379/").unwrap(),
            vec!["http://127.0.0.1:2379", "http://127.0.0.1:22379"]
        );
        for bad in [
            "",
            " , ",
            "127.0.0.1:2379",
            "https://a:1",
            "http://a:1/x",
            "http://u@a:1",
        ] {
            let e = parse_members(bad).unwrap_err();
            assert_eq!(e.code(), "invalid_input", "{bad}: {e}");
        }
    }

    #[test]
    fn range_answers_decode_strings_as_numbers() {
        // Recorded from etcd 3.4.23.
        let v: Value = serde_json::from_str(
            r#"{"header":{"revision":"2"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"3","version":"1","value":"YmFy","lease":"7"}],"count":"1"}"#,
        )
        .unwrap();
        let kvs = parse_kvs(&v).unwrap();
        assert_eq!(
            kvs,
            vec![Kv {
                key: "foo".into(),
                value: b"bar".to_vec(),
                create_revision: 2,
                mod_revision: 3,
                lease: 7
            }]
        );
        assert_eq!(header_revision(&v), 2);
        // Nothing matched: no `kvs` at all.
        assert!(parse_kvs(&serde_json::json!({"header": {}}))
            .unwrap()
            .is_empty());
        // A key that is not base64 is an error, not an empty key.
        let bad = serde_json::json!({"kvs": [{"key": "%%%"}]});
        assert_eq!(parse_kvs(&bad).unwrap_err().code(), "cluster_error");
    }

    #[test]
    fn failed_txn_has_no_succeeded_field() {
        let v: Value = serde_json::from_str(
            r#"{"header":{"revision":"9"},"responses":[{"response_range":{"header":{"revision":"9"},"kvs":[{"key":"Zm9v","value":"eA=="}],"count":"1"}},{"response_put":{"header":{}}}]}"#,
        )
        .unwrap();
        let t = parse_txn(&v).unwrap();
        assert!(!t.succeeded);
        assert_eq!(t.revision, 9);
        assert_eq!(t.reads.len(), 2);
        assert_eq!(t.reads[0][0].value, b"x".to_vec());
        assert!(t.reads[1].is_empty());
    }

    #[test]
    fn txn_body_encodes_keys_and_revisions() {
        let body = txn_body(
            &[Compare::CreateRevision("k".into(), CompareResult::Equal, 0)],
            &[Op::Put {
                key: "k".into(),
                value: b"v".to_vec(),
                lease: Some(42),
            }],
            &[Op::Get("k".into())],
        );
        assert_eq!(body["compare"][0]["key"], "aw==");
        assert_eq!(body["compare"][0]["target"], "CREATE");
        assert_eq!(body["compare"][0]["create_revision"], "0");
        assert_eq!(body["success"][0]["request_put"]["lease"], "42");
        assert_eq!(body["failure"][0]["request_range"]["key"], "aw==");
    }

    #[tokio::test]
    async fn no_member_listening_is_unavailable_within_the_deadline() {
        // Ports nothing listens on (bound then released).
        let ports: Vec<u16> = (0..3)
            .map(|_| {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port()
            })
            .collect();
        let list = ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let etcd = Etcd::new(&list)
            .unwrap()
            .with_deadline(Duration::from_millis(800));
        let start = Instant::now();
        let e = etcd.get("x").await.unwrap_err();
        let took = start.elapsed();
        assert_eq!(e.code(), "cluster_unavailable", "{e}");
        assert!(e.hint().is_some());
        assert!(took >= Duration::from_millis(800), "{took:?}");
        assert!(took < Duration::from_millis(1500), "{took:?}");
        assert!(e.to_string().contains("127.0.0.1"), "{e}");
    }
}
