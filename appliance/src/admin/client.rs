//! The admin API's client: HTTP/1.1 with JSON bodies over `freightd`'s Unix socket
//! (paths and bodies in [`crate::api`]).
//!
//! One connection per request: the CLI makes few calls, and a `freightd` restarted between
//! two polls of `freight watch` is simply reached again on the next one.

use crate::api::{ApiError, PREFIX};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use tokio::net::UnixStream;

/// Why an admin request failed: one line naming the socket or the object, and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `freightd` refused the request; its line names the object and the fix.
    #[error("{0}")]
    Refused(String),
    /// `freightd` cannot be reached, broke off, or answered what this CLI cannot read.
    #[error("{0}")]
    Admin(String),
    /// The request could not be built.
    #[error("{0}")]
    Request(String),
}

/// Where `freightd` listens unless `--admin` or `FREIGHT_ADMIN` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/freight/admin.sock";

/// Largest answer body read; a status or message list far beyond this is a runaway server.
const MAX_ANSWER: usize = 256 << 20;

/// Everything but the unreserved characters of RFC 3986 is escaped in a path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A client of one `freightd`'s admin socket.
#[derive(Debug, Clone)]
pub struct AdminClient {
    socket: PathBuf,
}

impl AdminClient {
    /// A client of the socket at `socket` (nothing is connected until the first request).
    pub fn new(socket: PathBuf) -> AdminClient {
        AdminClient { socket }
    }

    /// `GET PREFIX+path`. `path` is below [`PREFIX`] (`/dps`, `/status?package=PS100001`);
    /// build it with [`segment`] and [`with_query`].
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send::<(), T>(Method::GET, path, None).await
    }

    /// `POST PREFIX+path` with `body` as JSON.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(Method::POST, path, Some(body)).await
    }

    /// `PUT PREFIX+path` with `body` as JSON.
    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(Method::PUT, path, Some(body)).await
    }

    /// `DELETE PREFIX+path`.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send::<(), T>(Method::DELETE, path, None).await
    }

    /// Any method, with or without a JSON body. A 2xx answer is decoded as `T`; any other
    /// answer becomes [`ClientError::Refused`] with the server's one-line [`ApiError`].
    pub async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let full = format!("{PREFIX}{path}");
        let body = match body {
            Some(b) => Some(serde_json::to_vec(b).map_err(|e| {
                ClientError::Request(format!("{method} {full}: cannot encode the request: {e}"))
            })?),
            None => None,
        };
        let (status, bytes) = self.exchange(&method, &full, body).await?;
        decode(&method, &full, status, &bytes)
    }

    /// One request on a fresh connection; returns the status and the whole body.
    async fn exchange(
        &self,
        method: &Method,
        full: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| unreachable(&self.socket, &e))?;
        let broken = |e: &dyn std::fmt::Display| {
            ClientError::Admin(one_line(&format!(
                "{}: freightd broke off {method} {full} ({e}); check that it is running \
                 (journalctl -u freightd) and try again",
                self.socket.display()
            )))
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| broken(&e))?;
        // The connection future does the I/O; it ends when `sender` is dropped.
        let driver = tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method.clone())
            .uri(full)
            .header(header::HOST, "freightd")
            .header(header::ACCEPT, "application/json");
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Request(format!("{method} {full}: bad request: {e}")))?;
        let resp = sender.send_request(req).await.map_err(|e| broken(&e))?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| broken(&e))?
            .to_bytes();
        drop(sender);
        driver.abort();
        Ok((status, bytes))
    }
}

/// Decodes an answer: `T` on success, the server's [`ApiError`] line otherwise.
fn decode<T: DeserializeOwned>(
    method: &Method,
    full: &str,
    status: StatusCode,
    bytes: &[u8],
) -> Result<T, ClientError> {
    if status.is_success() {
        return serde_json::from_slice(bytes)
            .map_err(|e| mismatch(&format!("{method} {full}: "), &e));
    }
    match serde_json::from_slice::<ApiError>(bytes) {
        Ok(a) => Err(ClientError::Refused(one_line(&a.error))),
        Err(_) => {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]);
            let text = one_line(&text);
            let said = if text.is_empty() {
                String::new()
            } else {
                format!(" ({text})")
            };
            Err(ClientError::Admin(format!(
                "{method} {full}: freightd answered {status}{said}; use a freight CLI of the \
                 same version as freightd"
            )))
        }
    }
}

/// The error for an answer this CLI cannot read: `context` (such as `GET /v1/dps: `, or
/// nothing), the decoder's reason and the remedy.
pub fn mismatch(context: &str, e: &serde_json::Error) -> ClientError {
    ClientError::Admin(format!(
        "{context}freightd's answer does not match this freight ({e}); use a freight CLI of the \
         same version as freightd"
    ))
}

/// The error for a socket nobody answers on: names the socket and the two ways out.
fn unreachable(socket: &Path, e: &std::io::Error) -> ClientError {
    let s = socket.display();
    ClientError::Admin(if e.kind() == std::io::ErrorKind::PermissionDenied {
        format!("{s}: permission denied; run freight as root or as a member of the socket's group")
    } else {
        format!(
            "{s}: cannot reach freightd ({}); start freightd with its site role or pass \
             --admin SOCKET",
            io_reason(e)
        )
    })
}

/// An I/O error's text without the trailing ` (os error N)`.
fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_string(),
        _ => s,
    }
}

/// Joins lines and runs of whitespace so an error always prints as one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Percent-encodes one path segment (a DP, group or package name).
pub fn segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// `path?k=v&...` with the values form-encoded; pairs whose value is `None` are left out.
pub fn with_query(path: &str, pairs: &[(&str, Option<String>)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if let Some(v) = v {
            q.append_pair(k, v);
        }
    }
    let q = q.finish();
    if q.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{q}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_and_queries_are_encoded() {
        assert_eq!(segment("dp-1.a_b~"), "dp-1.a_b~");
        assert_eq!(segment("a b/c?d%"), "a%20b%2Fc%3Fd%25");
        assert_eq!(with_query("/status", &[("package", None)]), "/status");
        assert_eq!(
            with_query(
                "/messages",
                &[
                    ("package", Some("PS1 &x".into())),
                    ("since", Some("12".into()))
                ]
            ),
            "/messages?package=PS1+%26x&since=12"
        );
    }

    #[test]
    fn errors_are_one_line() {
        let e = std::io::Error::from_raw_os_error(libc::ENOENT);
        let msg = unreachable(Path::new("/x/admin.sock"), &e).to_string();
        assert_eq!(
            msg,
            "/x/admin.sock: cannot reach freightd (No such file or directory); start freightd \
             with its site role or pass --admin SOCKET"
        );
        let r: Result<(), _> = decode(
            &Method::GET,
            "/v1/dps/x",
            StatusCode::NOT_FOUND,
            br#"{"error":"DP x:\n  not found"}"#,
        );
        assert_eq!(r.unwrap_err().to_string(), "DP x: not found");
        let r: Result<(), _> = decode(&Method::GET, "/v1/nope", StatusCode::NOT_FOUND, b"");
        assert_eq!(
            r.unwrap_err().to_string(),
            "GET /v1/nope: freightd answered 404 Not Found; use a freight CLI of the same \
             version as freightd"
        );
    }

    #[test]
    fn an_unreadable_answer_names_the_call_and_the_remedy() {
        let r: Result<Vec<u32>, _> = decode(&Method::GET, "/v1/dps", StatusCode::OK, b"{}");
        let msg = r.unwrap_err().to_string();
        assert!(
            msg.starts_with("GET /v1/dps: freightd's answer does not match this freight ("),
            "{msg}"
        );
        assert!(
            msg.ends_with("); use a freight CLI of the same version as freightd"),
            "{msg}"
        );
    }
}
