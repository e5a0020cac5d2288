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
use crate::session::{read_error, write_error};
use std::future::Future;
use std::pin::Pin;

/// Largest request or reply body.
pub const MAX_COMMAND: u32 = 16 << 20;

/// A reply in the making.
pub type Reply = Pin<Box<dyn Future<Output = Vec<u8>> + Send>>;

/// What answers command streams on the accepting side of a connection.
pub trait CommandHandler: Send + Sync + 'static {
    /// Answers one request that arrived on `conn` (whose peer is authenticated).
    fn handle(&self, conn: Conn, request: Vec<u8>) -> Reply;
}

/// Sends one request on `conn` and waits for its reply.
pub async fn request(conn: &Conn, body: &[u8]) -> Result<Vec<u8>> {
    let who = conn.describe();
    if body.len() > MAX_COMMAND as usize {
        return Err(Error::Misuse(format!(
            "command of {} bytes is larger than {MAX_COMMAND}",
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
    read_body(&mut recv, &who).await
}

/// Reads a length-prefixed body (after the kind byte on the accepting side).
pub(crate) async fn read_body(recv: &mut quinn::RecvStream, who: &str) -> Result<Vec<u8>> {
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
    let len = u32::from_le_bytes(len);
    if len > MAX_COMMAND {
        return Err(Error::Protocol {
            code: ProtocolError::FrameTooLarge,
            detail: format!("{who}: command of {len} bytes, more than {MAX_COMMAND}"),
        });
    }
    let mut body = vec![0u8; len as usize];
    recv.read_exact(&mut body).await.map_err(ended)?;
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
    let body = read_body(&mut recv, &who).await?;
    let reply = handler.handle(conn, body).await;
    let mut out = (reply.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&reply);
    send.write_all(&out)
        .await
        .map_err(|e| on_command_stream("command reply not sent", write_error(&who, e)))?;
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
