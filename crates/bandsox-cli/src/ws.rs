//! WebSocket connections to the server (terminal, exec stream), authenticated with the
//! `bandsox.auth.<base64url key>` subprotocol so the key never appears in a URL.

use std::net::TcpStream;
use std::time::Duration;

use base64::Engine;
use tungstenite::client::IntoClientRequest;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::WebSocket;

use crate::client::{api_key, problem_error, CliError, Client};

pub type Socket = WebSocket<MaybeTlsStream<TcpStream>>;

/// Opens `path` (`/api/...`) on the client's server offering `protocols` (and the auth
/// subprotocol when a key is configured). `read_timeout` bounds each read.
pub fn connect(
    client: &Client,
    path: &str,
    protocols: &[&str],
    read_timeout: Option<Duration>,
) -> Result<Socket, CliError> {
    let url = client
        .url(path)?
        .replacen("https://", "wss://", 1)
        .replacen("http://", "ws://", 1);
    let mut offered: Vec<String> = protocols.iter().map(|p| (*p).to_owned()).collect();
    if let Some(key) = api_key() {
        offered.push(format!(
            "bandsox.auth.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
        ));
    }
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| CliError::new(format!("bad server URL {url}: {e}")))?;
    if !offered.is_empty() {
        let value = offered
            .join(", ")
            .parse()
            .map_err(|e| CliError::new(format!("bad WebSocket subprotocol: {e}")))?;
        req.headers_mut().insert("Sec-WebSocket-Protocol", value);
    }
    let (ws, _) = tungstenite::connect(req).map_err(|e| match e {
        tungstenite::Error::Http(resp) => {
            let body = resp
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            problem_error(resp.status().as_u16(), &body)
        }
        e => client.unreachable(&e),
    })?;
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(read_timeout)
            .map_err(|e| CliError::new(format!("socket: {e}")))?;
        let _ = s.set_nodelay(true);
    }
    Ok(ws)
}

/// True for a read that only timed out or was interrupted by a signal (the connection is fine).
pub fn timed_out(e: &tungstenite::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(e, tungstenite::Error::Io(io)
        if matches!(io.kind(), K::WouldBlock | K::TimedOut | K::Interrupted))
}
