//! A minimal QMP (QEMU Machine Protocol) client: JSON lines over a Unix socket.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use crate::VmmError;

/// Longest time any single QMP command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// One QMP session. Commands are serialised by `&mut self`.
pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Qmp {
    /// Connects (retrying while QEMU creates the socket) and negotiates capabilities.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, VmmError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::trace!(error = %e, "qmp socket not ready");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => {
                    return Err(VmmError::Control(format!(
                        "connect {}: {e}",
                        path.display()
                    )))
                }
            }
        };
        let (r, w) = stream.into_split();
        let mut qmp = Self {
            reader: BufReader::new(r),
            writer: w,
        };
        let greeting = qmp.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(VmmError::Control(format!(
                "unexpected QMP greeting: {greeting}"
            )));
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Runs one command and returns its `return` value.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, VmmError> {
        let mut msg = json!({ "execute": command });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut line = serde_json::to_vec(&msg).map_err(|e| VmmError::Control(e.to_string()))?;
        line.push(b'\n');
        let fut = async {
            self.writer.write_all(&line).await?;
            loop {
                let reply = self.read_message().await?;
                if reply.get("event").is_some() {
                    continue;
                }
                if let Some(err) = reply.get("error") {
                    return Err(VmmError::Control(format!("{command}: {err}")));
                }
                return Ok(reply.get("return").cloned().unwrap_or(Value::Null));
            }
        };
        tokio::time::timeout(COMMAND_TIMEOUT, fut)
            .await
            .map_err(|_| VmmError::Timeout {
                operation: "QMP command",
                timeout_ms: COMMAND_TIMEOUT.as_millis() as u64,
            })?
    }

    async fn read_message(&mut self) -> Result<Value, VmmError> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).await?;
        if n == 0 {
            return Err(VmmError::Exited {
                operation: "QMP",
                detail: "QMP socket closed".into(),
            });
        }
        serde_json::from_str(&line).map_err(|e| VmmError::Control(format!("bad QMP message: {e}")))
    }
}
