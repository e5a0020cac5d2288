//! Command streams: small authenticated request/reply exchanges on a site connection, beside
//! push sessions. A site server uses them to tell its DPs what to do (install, remove,
//! validate, pull from a source) and to ask what they hold; a pull DP uses them to ask a source
//! DP to push a package to it on the same connection.
//!
//! The transport does not interpret the bodies (the appliance defines them); it frames them
//! and hands them to a [`CommandHandler`] together with the connection they came on, so the
//! handler knows the peer's authenticated site and can push back over it.
//!
//! ```text
//! command stream   kind u8 = 4, length u32, request bytes   (opener → acceptor)
//!                  length u32, reply bytes                   (acceptor → opener)
//! ```

use crate::error::{Error, Result};
use crate::protocol::ProtocolError;
use crate::quic::{Conn, KIND_COMMAND, conn_error};
use crate::session::{read_error, within, write_error};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// Largest reply body.
pub const MAX_COMMAND: u32 = 16 << 20;
/// Largest request body an accepting side reads (requests are small descriptions of work).
pub const MAX_REQUEST: u32 = 1 << 20;

/// A reply in the making.
pub type Reply = Pin<Box<dyn Future<Output = Vec<u8>> + Send>>;

/// What answers command streams on the accepting side of a connection.
pub trait CommandHandler: Send + Sync + 'static {
    /// Answers one request that arrived on `conn` (whose peer is authenticated).
    fn handle(&self, conn: Conn, request: Vec<u8>) -> Reply;
}

/// Sends one request on `conn` and waits for its reply, at most the node's
/// `command_timeout` (the peer's work included).
pub async fn request(conn: &Conn, body: &[u8]) -> Result<Vec<u8>> {
    request_within(conn, body, conn.config.command_timeout).await
}

/// Sends one request on `conn` and waits for its reply, at most `limit`.
pub async fn request_within(conn: &Conn, body: &[u8], limit: Duration) -> Result<Vec<u8>> {
    let who = conn.describe();
    within(limit, &who, "command reply", exchange(conn, body, &who)).await
}

async fn exchange(conn: &Conn, body: &[u8], who: &str) -> Result<Vec<u8>> {
    let who = who.to_string();
    if body.len() > MAX_REQUEST as usize {
        return Err(Error::Misuse(format!(
            "command of {} bytes is larger than {MAX_REQUEST}",
            body.len()
        )));
    }
    let on_stream = |e| on_command_stream("command stream", e);
    let (mut send, mut recv) = conn
        .connection()
        .open_bi()
        .await
        .map_err(|e| on_stream(conn_error(&who, e)))?;
    let mut head = vec![KIND_COMMAND];
    head.extend_from_slice(&(body.len() as u32).to_le_bytes());
    send.write_all(&head)
        .await
        .map_err(|e| on_stream(write_error(&who, e)))?;
    send.write_all(body)
        .await
        .map_err(|e| on_stream(write_error(&who, e)))?;
    let _ = send.finish();
    read_body(&mut recv, &who, MAX_COMMAND).await
}

/// Reads a length-prefixed body of at most `max` bytes (after the kind byte on the accepting
/// side). Memory grows with the bytes that really arrive, never with the declared length.
pub(crate) async fn read_body(
    recv: &mut quinn::RecvStream,
    who: &str,
    max: u32,
) -> Result<Vec<u8>> {
    let ended = |e: quinn::ReadExactError| match e {
        quinn::ReadExactError::ReadError(e) => {
            on_command_stream("command stream", read_error(who, e))
        }
        early @ quinn::ReadExactError::FinishedEarly(_) => Error::Connection {
            peer: who.to_string(),
            reason: format!("command stream ended early: {early}"),
            remedy: "check that the peer runs; retry",
        },
    };
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await.map_err(ended)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > max as usize {
        return Err(Error::Protocol {
            code: ProtocolError::FrameTooLarge,
            detail: format!("{who}: command body of {len} bytes, more than {max}"),
        });
    }
    let mut body = Vec::with_capacity(len.min(64 << 10));
    while body.len() < len {
        match recv.read_chunk(len - body.len(), true).await {
            Ok(Some(c)) => body.extend_from_slice(&c.bytes),
            Ok(None) => {
                return Err(Error::Connection {
                    peer: who.to_string(),
                    reason: format!("command stream ended early: {} of {len} bytes", body.len()),
                    remedy: "check that the peer runs; retry",
                });
            }
            Err(e) => return Err(on_command_stream("command stream", read_error(who, e))),
        }
    }
    Ok(body)
}

/// Answers one command stream whose kind byte was already read.
pub(crate) async fn answer(
    conn: Conn,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    handler: &dyn CommandHandler,
) -> Result<()> {
    let who = conn.describe();
    let (step, stall) = (conn.config.step_timeout, conn.config.progress_timeout);
    let body = within(
        step,
        &who,
        "command request",
        read_body(&mut recv, &who, MAX_REQUEST),
    )
    .await?;
    let reply = handler.handle(conn, body).await;
    let mut out = (reply.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&reply);
    within(stall, &who, "reading of the command reply", async {
        send.write_all(&out)
            .await
            .map_err(|e| on_command_stream("command reply not sent", write_error(&who, e)))
    })
    .await?;
    let _ = send.finish();
    Ok(())
}

/// Says that a connection or stream error (as [`conn_error`], [`write_error`] and
/// [`read_error`] word it, with its cause and remedy) happened on a command stream.
fn on_command_stream(what: &str, e: Error) -> Error {
    match e {
        Error::Connection {
            peer,
            reason,
            remedy,
        } => Error::Connection {
            peer,
            reason: format!("{what}: {reason}"),
            remedy,
        },
        other => other,
    }
}
