//! The crate's one error enum. Every message is one line that names the object or peer and
//! says what to do about it.

use crate::protocol::ProtocolError;

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the transport.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The peer broke the protocol (or the local side detected a bad frame, chunk or manifest);
    /// the session is over and, where possible, an `Abort` with `code` was queued for the peer.
    #[error("{detail} (protocol error {}: {code}); {}", code.code(), code.remedy())]
    Protocol {
        /// What kind of violation.
        code: ProtocolError,
        /// One line naming the peer and object (chunk, package, frame) concerned.
        detail: String,
    },
    /// The peer sent `Abort`; the session is over.
    #[error(
        "peer aborted the transfer with code {code} ({}): {reason}; fix the cause on the peer, then run the session again (it resumes with the missing chunks)",
        ProtocolError::name_of(*code)
    )]
    PeerAborted {
        /// The peer's error code (see [`ProtocolError`]; unknown codes are kept as sent).
        code: u16,
        /// The peer's one-line reason.
        reason: String,
    },
    /// Something is too large for one frame of this protocol version.
    #[error(
        "{what} is {size} bytes, more than one protocol frame carries ({max}); split the package or use smaller chunks"
    )]
    TooLarge {
        /// The object, e.g. `chunk 1a2b3c4d5e6f7a8b of CAS00001 v3`.
        what: String,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// TLS could not be set up locally (certificate or configuration).
    #[error("{0}; check the site key and trust store")]
    Tls(String),
    /// A peer's certificate was refused at the handshake (unknown, revoked or unbound key,
    /// wrong site); the message names the site and the key's fingerprint.
    #[error("{0}")]
    PeerRefused(String),
    /// The QUIC connection to or from a peer failed or was lost.
    #[error("connection with {peer}: {reason}; {remedy}")]
    Connection {
        /// The peer's address and, once known, its site.
        peer: String,
        /// What happened.
        reason: String,
        /// What to do.
        remedy: &'static str,
    },
    /// A local socket or endpoint operation failed.
    #[error("{what}: {source}; {remedy}")]
    Io {
        /// What was being done, e.g. `bind UDP 127.0.0.1:4433`.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
        /// What to do.
        remedy: &'static str,
    },
    /// Chunks a session received were rolled back by a commit that failed (a full disk), so
    /// its manifest cannot be stored.
    #[error(
        "{package} v{version}: received chunk {chunk} could not be stored ({reason}); fix that, then run the transfer again (it resumes with what is missing)"
    )]
    StoreFailed {
        /// Package ID.
        package: String,
        /// Version.
        version: u32,
        /// The first lost chunk (short hex).
        chunk: String,
        /// The failed commit's one-line error.
        reason: String,
    },
    /// The content library or trust store failed (its message names the object and the fix).
    #[error(transparent)]
    Core(#[from] freight_core::Error),
    /// A route throttle in the compact text form does not parse or is invalid.
    #[error("{}", bad_schedule_message(input, *at, token, reason))]
    BadSchedule {
        /// The whole text as given.
        input: String,
        /// Byte offset in `input` of the offending word (or of where one is missing).
        at: usize,
        /// The offending word; empty when something is missing.
        token: String,
        /// Why, and what to write instead.
        reason: String,
    },
    /// A route throttle in the TOML form does not parse or is invalid.
    #[error("throttle schedule (TOML), {place}: {reason}")]
    BadScheduleToml {
        /// Where: `line 3 column 7`, `window 2: days = "Mun"`, `time_zone = "Mars/Base"`.
        place: String,
        /// Why, and what to write instead.
        reason: String,
    },
    /// A route throttle built in code is invalid; names the cell or setting and the fix.
    #[error("invalid route throttle: {0}")]
    BadThrottle(String),
    /// A package priority that is not low, medium or high.
    #[error("unknown package priority {0:?}; write low, medium or high")]
    BadPriority(String),
    /// The I/O shell called the state machine wrongly (a bug in the caller, not the peer);
    /// nothing was sent.
    #[error("{0}; this is a bug in the transport's I/O shell, fix the caller")]
    Misuse(String),
}

fn bad_schedule_message(input: &str, at: usize, token: &str, reason: &str) -> String {
    let column = input.get(..at).map_or(at, |before| before.chars().count()) + 1;
    // A long schedule is not echoed whole: the offending word and its column say where.
    let input = if input.chars().count() > LONGEST_ECHOED {
        format!("of {} bytes", input.len())
    } else {
        format!("{input:?}")
    };
    if token.is_empty() {
        return format!("throttle schedule {input}, at column {column}: {reason}");
    }
    let token = if token.chars().count() > LONGEST_ECHOED {
        format!("a word of {} bytes", token.len())
    } else {
        format!("{token:?}")
    };
    format!("throttle schedule {input}, {token} at column {column}: {reason}")
}

/// Longest schedule text, or word of one, an error message repeats.
const LONGEST_ECHOED: usize = 200;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_schedule_is_not_echoed_whole() {
        let short = bad_schedule_message("Mon closed x", 11, "x", "why");
        assert_eq!(
            short,
            "throttle schedule \"Mon closed x\", \"x\" at column 12: why"
        );
        let missing = bad_schedule_message("Mon", 3, "", "why");
        assert_eq!(missing, "throttle schedule \"Mon\", at column 4: why");
        let long = "Mon closed; ".repeat(100) + "Mun closed";
        let e = bad_schedule_message(&long, 1200, "Mun", "unknown day");
        assert_eq!(
            e,
            "throttle schedule of 1210 bytes, \"Mun\" at column 1201: unknown day"
        );
        let e = bad_schedule_message(&long, 0, &long, "bad");
        assert!(e.contains("a word of 1210 bytes"), "{e}");
    }
}
