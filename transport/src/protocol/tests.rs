//! Whole sessions and their failures, driven through encode → byte pipes → FrameDecoder,
//! and the fixtures the modules' own tests share.

use super::*;
use crate::error::Error;
use freight_core::manifest::{ChunkRef, Entry, EntryKind};
use freight_core::{ChunkId, Manifest, PackageId};
use proptest::prelude::*;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// A library: chunk ID → (ulen, flags, stored data).
pub(super) type Lib = HashMap<ChunkId, (u32, u8, Vec<u8>)>;

/// Deterministic xorshift64*.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn dir(path: &str) -> Entry {
    Entry {
        path: path.as_bytes().to_vec(),
        mode: 0o755,
        mtime_sec: 1_700_000_000,
        mtime_nsec: 0,
        kind: EntryKind::Dir,
    }
}

/// A manifest of 5 files × 4 chunks (every third chunk zstd-compressed) and the sender's
/// library holding them.
pub(super) fn fixture() -> (Manifest, Lib) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut lib = Lib::new();
    let mut entries = vec![dir("")];
    for f in 0..5 {
        let mut chunks = Vec::new();
        for c in 0..4 {
            let i = f * 4 + c;
            let len = 200 + rng.below(3000);
            let (raw, compress) = if i % 3 == 0 {
                let mut v = vec![i as u8; len];
                v[0] = 0xAA; // distinct from other chunks
                v[1] = i as u8;
                (v, true)
            } else {
                let mut v: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                v[0] = i as u8;
                (v, false)
            };
            let id = ChunkId::of(&raw);
            let stored = if compress {
                (
                    raw.len() as u32,
                    FLAG_ZSTD,
                    zstd::bulk::compress(&raw, 3).unwrap(),
                )
            } else {
                (raw.len() as u32, 0, raw.clone())
            };
            lib.insert(id, stored);
            chunks.push(ChunkRef {
                id,
                len: raw.len() as u32,
            });
        }
        entries.push(Entry {
            path: format!("f{f}").into_bytes(),
            mode: 0o644,
            mtime_sec: 1_700_000_000,
            mtime_nsec: 0,
            kind: EntryKind::File {
                size: chunks.iter().map(|c| c.len as u64).sum(),
                chunks,
            },
        });
    }
    let m = Manifest {
        package: PackageId::parse("CAS00001").unwrap(),
        version: 3,
        entries,
    };
    assert_eq!(m.chunks().len(), 20);
    (m, lib)
}

#[derive(Debug, Default)]
struct Outcome {
    /// The whole Need list, once `NeedEnd` arrived, and how many parts carried it.
    need: Option<Vec<ChunkId>>,
    need_so_far: Vec<ChunkId>,
    need_parts: usize,
    /// Manifest parts the sender queued, and the receiver's "temporary file".
    manifest_parts: usize,
    manifest_file: Vec<u8>,
    chunks_sent: usize,
    sender_err: Option<Error>,
    receiver_err: Option<Error>,
    committed: Option<Manifest>,
    /// `Done` reached the receiver while a data stream was still open (so it was held).
    done_before_data_ended: bool,
}

fn move_bytes(pipe: &mut Vec<u8>, dec: &mut FrameDecoder, rng: &mut Rng) {
    let n = if pipe.is_empty() {
        0
    } else {
        1 + rng.below(pipe.len().min(700))
    };
    dec.push(&pipe[..n]);
    pipe.drain(..n);
}

/// One data stream of a simulated session: its bytes in flight and the receiving end.
#[derive(Default)]
struct DataPipe {
    bytes: Vec<u8>,
    dec: FrameDecoder,
    /// The receiver has seen it open, and the verifier it gave for its chunks.
    verifier: Option<ChunkVerifier>,
    /// The sender finished it: once its bytes are through, the receiver sees it end.
    finished: bool,
    ended: bool,
}

/// What the shell tells the receiver of received manifest bytes.
pub(super) fn load(bytes: &[u8], what: &str) -> freight_core::Result<freight_core::ManifestChunks> {
    Manifest::decode(bytes, what).and_then(|m| freight_core::ManifestChunks::of(&m))
}

/// What a shell does with the receiver's events: look up, store, commit.
fn perform(r: &mut Receiver, events: Vec<ReceiverEvent>, recv_lib: &mut Lib, out: &mut Outcome) {
    for ev in events {
        match ev {
            ReceiverEvent::ManifestPart { data } => out.manifest_file.extend_from_slice(&data),
            ReceiverEvent::ManifestComplete => {
                let decoded = load(&out.manifest_file, "received manifest");
                match r.manifest_loaded(decoded) {
                    Ok(events) => perform(r, events, recv_lib, out),
                    Err(e) => {
                        out.receiver_err.get_or_insert(e);
                    }
                }
            }
            ReceiverEvent::Lookup { chunks } => {
                let lack: Vec<ChunkId> = chunks
                    .ids()
                    .iter()
                    .copied()
                    .filter(|id| !recv_lib.contains_key(id))
                    .collect();
                r.lacking(lack).unwrap();
            }
            ReceiverEvent::Store {
                id,
                ulen,
                flags,
                data,
            } => {
                recv_lib.insert(id, (ulen, flags, data));
            }
            ReceiverEvent::Commit => {
                // The shell commits the bytes it received.
                out.committed = Some(Manifest::decode(&out.manifest_file, "committed").unwrap());
                r.committed().unwrap();
            }
        }
    }
}

/// What a sender's shell does with its events: read manifest parts (from `bytes`, the
/// stored manifest) and chunks (from `lib`), one after the other.
pub(super) fn answer(s: &mut Sender, events: Vec<SenderEvent>, bytes: &[u8], lib: &Lib) {
    let mut todo = VecDeque::from(events);
    while let Some(ev) = todo.pop_front() {
        match ev {
            SenderEvent::ReadManifest { offset, len } => {
                let part = bytes[offset as usize..][..len].to_vec();
                todo.extend(s.manifest_part(offset, part).unwrap());
            }
            SenderEvent::ReadChunk(id) => {
                let (ulen, flags, data) = lib[&id].clone();
                s.chunk_ready(id, ulen, flags, data).unwrap();
            }
        }
    }
}

/// Runs a whole session on one stream through encode → byte pipes cut in random slices →
/// FrameDecoder.
fn run(manifest: &Manifest, send_lib: &Lib, recv_lib: &mut Lib, seed: u64) -> Outcome {
    run_streams(manifest, send_lib, recv_lib, seed, 0)
}

fn run_streams(
    manifest: &Manifest,
    send_lib: &Lib,
    recv_lib: &mut Lib,
    seed: u64,
    data_streams: u16,
) -> Outcome {
    run_parts(
        manifest,
        send_lib,
        recv_lib,
        seed,
        data_streams,
        (MAX_MANIFEST_PART, MAX_NEED_IDS),
    )
}

/// Runs a whole session with `data_streams` data streams beside the control stream, as a
/// shell would, without sockets: each stream is a byte pipe cut in random slices, chunks go
/// to a random data stream, and the streams advance at random relative to each other, so
/// `Done` often overtakes chunks still on their way. With 0 it is [`run`]. `parts` are the
/// largest manifest part (bytes) and `Need` part (IDs), so a small manifest travels in many.
fn run_parts(
    manifest: &Manifest,
    send_lib: &Lib,
    recv_lib: &mut Lib,
    seed: u64,
    data_streams: u16,
    parts: (usize, usize),
) -> Outcome {
    let mut rng = Rng(seed | 1);
    let mut out = Outcome::default();
    let bytes = manifest.encode();
    let mut s = Sender::with_data_streams(manifest, data_streams).unwrap();
    s.part_len = parts.0;
    let mut r = Receiver::with_data_streams(data_streams);
    r.need_part = parts.1;
    let (mut s2r, mut r2s) = (Vec::new(), Vec::new());
    let (mut sdec, mut rdec) = (FrameDecoder::new(), FrameDecoder::new());
    // Opened by the sender once it has the Need, like the shell's writers.
    let mut data: Vec<DataPipe> = Vec::new();
    for _ in 0..100_000 {
        while let Some(t) = s.poll_transmit() {
            match t {
                Transmit::Control(m) => {
                    if matches!(m, Message::Chunk { .. }) {
                        out.chunks_sent += 1;
                    }
                    if matches!(m, Message::ManifestPart { .. }) {
                        out.manifest_parts += 1;
                    }
                    m.encode_into(&mut s2r);
                }
                Transmit::Data {
                    id,
                    ulen,
                    flags,
                    data: bytes,
                } => {
                    out.chunks_sent += 1;
                    let i = rng.below(data.len());
                    let chunk = Message::Chunk {
                        id,
                        ulen,
                        flags,
                        data: bytes,
                    };
                    chunk.encode_into(&mut data[i].bytes);
                }
                Transmit::FinishData => {
                    // Writing to a pipe cannot fail: every stream finishes at once, so Done
                    // goes out while chunks may still be in the pipes.
                    for (i, d) in data.iter_mut().enumerate() {
                        d.finished = true;
                        s.data_stream_finished(i as u16).unwrap();
                    }
                }
            }
        }
        while let Some(m) = r.poll_transmit() {
            match &m {
                Message::Need { chunks } => {
                    out.need_parts += 1;
                    out.need_so_far.extend_from_slice(chunks);
                }
                Message::NeedEnd => out.need = Some(std::mem::take(&mut out.need_so_far)),
                _ => {}
            }
            m.encode_into(&mut r2s);
        }
        let finished = |s: &Sender, r: &Receiver| {
            (s.is_done() || s.is_failed()) && (r.is_done() || r.is_failed())
        };
        // A failed receiver reads no more data: what is left in the pipes stays there.
        let data_idle = r.is_failed() || data.iter().all(|d| d.bytes.is_empty());
        if s2r.is_empty() && r2s.is_empty() && data_idle && finished(&s, &r) {
            break;
        }
        move_bytes(&mut s2r, &mut rdec, &mut rng);
        loop {
            match rdec.next_message() {
                Ok(Some(m)) => {
                    if m == Message::Done && data.iter().any(|d| !d.ended) {
                        out.done_before_data_ended = true;
                    }
                    match r.handle(m) {
                        Ok(events) => perform(&mut r, events, recv_lib, &mut out),
                        Err(e) => {
                            out.receiver_err.get_or_insert(e);
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => panic!("receiver decoder: {e}"),
            }
        }
        for (i, d) in data.iter_mut().enumerate() {
            // Each data stream advances on about one step in three.
            if d.ended || r.is_failed() || rng.below(3) != 0 {
                continue;
            }
            let verifier = match &d.verifier {
                Some(v) => v.clone(),
                None => match r.data_stream_opened(i as u16) {
                    Ok(v) => d.verifier.insert(v).clone(),
                    Err(e) => {
                        out.receiver_err.get_or_insert(e);
                        continue;
                    }
                },
            };
            move_bytes(&mut d.bytes, &mut d.dec, &mut rng);
            while let Some(m) = d.dec.next_message().expect("data stream decodes") {
                match r.handle_checked(verifier.verify_data(m)) {
                    Ok(event) => perform(&mut r, vec![event], recv_lib, &mut out),
                    Err(e) => {
                        out.receiver_err.get_or_insert(e);
                    }
                }
            }
            if d.finished && d.bytes.is_empty() && d.dec.buffered() == 0 {
                d.ended = true;
                match r.data_stream_ended(i as u16) {
                    Ok(events) => perform(&mut r, events, recv_lib, &mut out),
                    Err(e) => {
                        out.receiver_err.get_or_insert(e);
                    }
                }
            }
        }
        move_bytes(&mut r2s, &mut sdec, &mut rng);
        loop {
            match sdec.next_message() {
                Ok(Some(m)) => match (m == Message::NeedEnd, s.handle(m)) {
                    (need_end, Ok(events)) => {
                        if need_end {
                            data.resize_with(usize::from(data_streams), DataPipe::default);
                        }
                        answer(&mut s, events, &bytes, send_lib);
                    }
                    (_, Err(e)) => {
                        out.sender_err.get_or_insert(e);
                    }
                },
                Ok(None) => break,
                Err(e) => panic!("sender decoder: {e}"),
            }
        }
    }
    out
}

/// The sender's next item, which in a session without data streams is always a control
/// message.
pub(super) fn sent(s: &mut Sender) -> Option<Message> {
    s.poll_transmit().map(|t| match t {
        Transmit::Control(m) => m,
        other => panic!("{other:?} in a session without data streams"),
    })
}

pub(super) fn code_of(e: &Error) -> Option<ProtocolError> {
    match e {
        Error::Protocol { code, .. } => Some(*code),
        _ => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn full_exchange_in_random_slices(seed in any::<u64>()) {
        let (m, send_lib) = fixture();
        let mut recv_lib = Lib::new();
        let out = run(&m, &send_lib, &mut recv_lib, seed);
        prop_assert!(out.sender_err.is_none(), "{:?}", out.sender_err);
        prop_assert!(out.receiver_err.is_none(), "{:?}", out.receiver_err);
        prop_assert_eq!(out.chunks_sent, 20);
        prop_assert_eq!(out.committed.as_ref(), Some(&m));
        prop_assert_eq!(&recv_lib, &send_lib);
    }

    #[test]
    fn full_exchange_over_data_streams_in_random_slices(seed in any::<u64>(), streams in 1u16..6) {
        let (m, send_lib) = fixture();
        let mut recv_lib = Lib::new();
        let out = run_streams(&m, &send_lib, &mut recv_lib, seed, streams);
        prop_assert!(out.sender_err.is_none(), "{:?}", out.sender_err);
        prop_assert!(out.receiver_err.is_none(), "{:?}", out.receiver_err);
        prop_assert_eq!(out.chunks_sent, 20);
        prop_assert_eq!(out.committed.as_ref(), Some(&m));
        prop_assert_eq!(&recv_lib, &send_lib);
    }

    /// The manifest in many small parts (so some parts are a single byte and the last is
    /// short) and the Need list in many parts, over data streams or none.
    #[test]
    fn multi_part_manifests_and_needs_in_random_slices(
        seed in any::<u64>(),
        streams in 0u16..4,
        part_len in 1usize..400,
        need_part in 1usize..7,
    ) {
        let (m, send_lib) = fixture();
        let mut recv_lib = Lib::new();
        let out = run_parts(&m, &send_lib, &mut recv_lib, seed, streams, (part_len, need_part));
        prop_assert!(out.sender_err.is_none(), "{:?}", out.sender_err);
        prop_assert!(out.receiver_err.is_none(), "{:?}", out.receiver_err);
        let len = m.encode().len();
        prop_assert_eq!(out.manifest_parts, len.div_ceil(part_len));
        prop_assert_eq!(&out.manifest_file, &m.encode());
        prop_assert_eq!(out.need_parts, 20usize.div_ceil(need_part));
        prop_assert_eq!(out.need.as_ref().map(Vec::len), Some(20));
        prop_assert_eq!(out.chunks_sent, 20);
        prop_assert_eq!(out.committed.as_ref(), Some(&m));
        prop_assert_eq!(&recv_lib, &send_lib);
    }
}

#[test]
fn a_multi_part_session_resumes_with_only_what_is_missing() {
    let (m, send_lib) = fixture();
    let all: Vec<ChunkId> = m.chunks().into_keys().collect();
    let mut recv_lib: Lib = all
        .iter()
        .step_by(4)
        .map(|id| (*id, send_lib[id].clone()))
        .collect();
    let out = run_parts(&m, &send_lib, &mut recv_lib, 3, 2, (64, 4));
    assert!(
        out.sender_err.is_none() && out.receiver_err.is_none(),
        "{out:?}"
    );
    assert_eq!(out.chunks_sent, 15);
    assert_eq!(out.need_parts, 4);
    assert_eq!(recv_lib, send_lib);
    // Nothing missing: no Need part at all, just its end; the manifest still travels whole.
    let out = run_parts(&m, &send_lib, &mut recv_lib, 4, 2, (64, 4));
    assert_eq!(
        (out.need, out.need_parts, out.chunks_sent),
        (Some(vec![]), 0, 0)
    );
    assert_eq!(out.manifest_file, m.encode());
    assert_eq!(out.committed.as_ref(), Some(&m));
}

#[test]
fn done_overtaking_the_data_streams_is_held_until_they_end() {
    // Seeds where Done reached the receiver before some data stream had ended: the receiver
    // held it, took the late chunks, and committed once the last stream ended.
    let (m, send_lib) = fixture();
    let mut held = 0;
    for seed in 0..64 {
        let mut recv_lib = Lib::new();
        let out = run_streams(&m, &send_lib, &mut recv_lib, seed, 3);
        assert!(
            out.sender_err.is_none() && out.receiver_err.is_none(),
            "seed {seed}: {out:?}"
        );
        assert_eq!(out.committed.as_ref(), Some(&m), "seed {seed}");
        assert_eq!(recv_lib, send_lib, "seed {seed}");
        held += usize::from(out.done_before_data_ended);
    }
    assert!(held > 0, "no seed let Done overtake the data streams");

    // Resuming over data streams sends only what is missing, and an empty Need still ends
    // the data streams before Done.
    let all: Vec<ChunkId> = m.chunks().into_keys().collect();
    let mut recv_lib: Lib = all
        .iter()
        .step_by(3)
        .map(|id| (*id, send_lib[id].clone()))
        .collect();
    let out = run_streams(&m, &send_lib, &mut recv_lib, 11, 2);
    assert_eq!(out.chunks_sent, all.len() - all.iter().step_by(3).count());
    assert_eq!(recv_lib, send_lib);
    let out = run_streams(&m, &send_lib, &mut recv_lib, 12, 2);
    assert_eq!((out.need, out.chunks_sent), (Some(vec![]), 0));
    assert_eq!(out.committed.as_ref(), Some(&m));
}

#[test]
fn sender_and_receiver_finish() {
    let (m, send_lib) = fixture();
    let mut recv_lib = Lib::new();
    let out = run(&m, &send_lib, &mut recv_lib, 7);
    assert!(out.sender_err.is_none() && out.receiver_err.is_none());
    assert_eq!(recv_lib.len(), 20);
    let mut ids: Vec<ChunkId> = recv_lib.keys().copied().collect();
    ids.sort();
    assert_eq!(ids, m.chunks().into_keys().collect::<Vec<_>>());
}

#[test]
fn resume_sends_only_missing_chunks() {
    let (m, send_lib) = fixture();
    let all: Vec<ChunkId> = m.chunks().into_keys().collect();
    let mut recv_lib: Lib = all
        .iter()
        .step_by(2)
        .map(|id| (*id, send_lib[id].clone()))
        .collect();
    let mut expected: Vec<ChunkId> = all.iter().skip(1).step_by(2).copied().collect();
    let out = run(&m, &send_lib, &mut recv_lib, 42);
    assert!(out.sender_err.is_none() && out.receiver_err.is_none());
    let mut need = out.need.unwrap();
    need.sort();
    expected.sort();
    assert_eq!(need, expected);
    assert_eq!(out.chunks_sent, 10);
    assert_eq!(recv_lib, send_lib);

    // Everything present: Need is empty, no chunk flows, still committed.
    let out = run(&m, &send_lib, &mut recv_lib, 43);
    assert_eq!(out.need, Some(vec![]));
    assert_eq!(out.chunks_sent, 0);
    assert_eq!(out.committed.as_ref(), Some(&m));
}

/// A receiver driven to the Receiving state for `m`, lacking everything.
pub(super) fn receiving(m: &Manifest) -> Receiver {
    receiving_on(m, Receiver::new())
}

pub(super) const HELLO: Message = Message::Hello {
    version_min: VERSION_MIN,
    version_max: VERSION_MAX,
};

/// The `Offer` of `bytes`, the canonical bytes of a manifest of `m`'s package version.
pub(super) fn offer_of(m: &Manifest, bytes: &[u8]) -> Message {
    Message::Offer {
        package: m.package.clone(),
        version: m.version,
        manifest_len: bytes.len() as u64,
        manifest_hash: *blake3::hash(bytes).as_bytes(),
    }
}

/// Hands a receiver that got `Hello` the offer of `bytes` (as `m`'s) in one part and loads
/// the manifest they decode to: the `Lookup` event, or the first error.
pub(super) fn offer_bytes(
    r: &mut Receiver,
    m: &Manifest,
    bytes: &[u8],
) -> Result<Vec<ReceiverEvent>, Error> {
    assert!(r.handle(offer_of(m, bytes))?.is_empty());
    let ev = r.handle(Message::ManifestPart {
        offset: 0,
        data: bytes.to_vec(),
    })?;
    assert!(
        matches!(&ev[..], [ReceiverEvent::ManifestPart { data }, ReceiverEvent::ManifestComplete] if data == bytes)
    );
    r.manifest_loaded(load(bytes, "received manifest"))
}

/// `r` (new, any data streams) driven to the Receiving state for `m`, lacking everything,
/// its Hello, Need and NeedEnd taken.
pub(super) fn receiving_on(m: &Manifest, mut r: Receiver) -> Receiver {
    r.handle(HELLO).unwrap();
    let ev = offer_bytes(&mut r, m, &m.encode()).unwrap();
    assert!(matches!(&ev[..], [ReceiverEvent::Lookup { .. }]));
    r.lacking(m.chunks().into_keys()).unwrap();
    assert!(matches!(r.poll_transmit(), Some(Message::Hello { .. })));
    assert!(matches!(r.poll_transmit(), Some(Message::Need { .. })));
    assert_eq!(r.poll_transmit(), Some(Message::NeedEnd));
    r
}

pub(super) fn assert_abort(r: Option<Message>, code: ProtocolError) -> String {
    match r {
        Some(Message::Abort { code: c, reason }) => {
            assert_eq!(c, code.code(), "{reason}");
            reason
        }
        other => panic!("expected Abort {code}, got {other:?}"),
    }
}

#[test]
fn chunk_not_matching_its_id_is_rejected() {
    let (m, lib) = fixture();
    let (raw_id, compressed_id) = {
        let mut raw = None;
        let mut comp = None;
        for (id, (_, flags, _)) in &lib {
            if *flags == 0 {
                raw = Some(*id);
            } else {
                comp = Some(*id);
            }
        }
        (raw.unwrap(), comp.unwrap())
    };
    for id in [raw_id, compressed_id] {
        let mut r = receiving(&m);
        let (ulen, flags, mut data) = lib[&id].clone();
        if flags == 0 {
            data[5] ^= 1;
        } else {
            let mut raw = zstd::bulk::decompress(&data, ulen as usize).unwrap();
            raw[5] ^= 1;
            data = zstd::bulk::compress(&raw, 3).unwrap();
        }
        let err = r
            .handle(Message::Chunk {
                id,
                ulen,
                flags,
                data,
            })
            .unwrap_err();
        assert_eq!(code_of(&err), Some(ProtocolError::BadChunk));
        assert!(err.to_string().contains(&id.short()), "{err}");
        let reason = assert_abort(r.poll_transmit(), ProtocolError::BadChunk);
        assert!(reason.contains(&id.short()), "{reason}");
        assert!(r.is_failed());
    }

    // Through the whole session: the corrupt chunk is never stored, the sender sees Abort.
    let mut bad_lib = lib.clone();
    bad_lib.get_mut(&raw_id).unwrap().2[0] ^= 0xFF;
    let mut recv_lib = Lib::new();
    let out = run(&m, &bad_lib, &mut recv_lib, 5);
    assert_eq!(
        out.receiver_err.as_ref().and_then(code_of),
        Some(ProtocolError::BadChunk)
    );
    assert!(matches!(
        out.sender_err,
        Some(Error::PeerAborted { code: 8, .. })
    ));
    assert!(!recv_lib.contains_key(&raw_id));
    assert!(out.committed.is_none());
}

#[test]
fn wrong_length_flags_and_garbage_zstd_are_bad_chunks() {
    let (m, lib) = fixture();
    let (id, (ulen, flags, data)) = lib.iter().find(|(_, v)| v.1 == 0).unwrap();
    for (ulen, flags, data) in [
        (*ulen + 1, *flags, data.clone()),
        (*ulen, 0x80, data.clone()),
        (*ulen, FLAG_ZSTD, data.clone()),
        (MAX_ULEN + 1, *flags, data.clone()),
    ] {
        let mut r = receiving(&m);
        let err = r
            .handle(Message::Chunk {
                id: *id,
                ulen,
                flags,
                data,
            })
            .unwrap_err();
        assert_eq!(code_of(&err), Some(ProtocolError::BadChunk), "{err}");
    }
}

#[test]
fn unneeded_duplicate_chunks_and_early_done() {
    let (m, lib) = fixture();
    let ids: Vec<ChunkId> = m.chunks().into_keys().collect();
    let chunk = |id: &ChunkId| {
        let (ulen, flags, data) = lib[id].clone();
        Message::Chunk {
            id: *id,
            ulen,
            flags,
            data,
        }
    };
    // Not in the manifest.
    let mut r = receiving(&m);
    let stray = ChunkId::of(b"stray");
    let err = r
        .handle(Message::Chunk {
            id: stray,
            ulen: 5,
            flags: 0,
            data: b"stray".to_vec(),
        })
        .unwrap_err();
    assert_eq!(code_of(&err), Some(ProtocolError::UnexpectedChunk));
    assert_abort(r.poll_transmit(), ProtocolError::UnexpectedChunk);
    // Duplicate.
    let mut r = receiving(&m);
    assert!(r.handle(chunk(&ids[0])).is_ok());
    let err = r.handle(chunk(&ids[0])).unwrap_err();
    assert_eq!(code_of(&err), Some(ProtocolError::UnexpectedChunk));
    // Done too early.
    let mut r = receiving(&m);
    r.handle(chunk(&ids[0])).unwrap();
    let err = r.handle(Message::Done).unwrap_err();
    assert_eq!(code_of(&err), Some(ProtocolError::Incomplete));
    assert_abort(r.poll_transmit(), ProtocolError::Incomplete);
}

#[test]
fn bad_manifest_is_aborted() {
    let (m, _) = fixture();
    let mut r = Receiver::new();
    r.handle(Message::Hello {
        version_min: 1,
        version_max: 3,
    })
    .unwrap();
    assert_eq!(r.protocol_version(), Some(2));
    // Bytes that hash right (the offer names their hash) but do not decode.
    let mut bytes = m.encode();
    bytes.truncate(bytes.len() - 3);
    let err = offer_bytes(&mut r, &m, &bytes).unwrap_err();
    assert_eq!(code_of(&err), Some(ProtocolError::BadManifest));
    // Unsent messages (the Hello) are dropped: the Abort goes out alone.
    assert_abort(r.poll_transmit(), ProtocolError::BadManifest);

    // Offer naming another version than its manifest.
    let mut r = Receiver::new();
    r.handle(HELLO).unwrap();
    let mut other = m.clone();
    other.version += 1;
    let err = offer_bytes(&mut r, &other, &m.encode()).unwrap_err();
    assert_eq!(code_of(&err), Some(ProtocolError::BadManifest));
    assert!(err.to_string().contains("is really"), "{err}");
}

/// A receiver of `m`'s offer (in parts of `part` bytes) that took `Hello` and `Offer`.
fn offered(m: &Manifest) -> (Receiver, Vec<u8>) {
    let bytes = m.encode();
    let mut r = Receiver::new();
    r.handle(HELLO).unwrap();
    assert!(r.handle(offer_of(m, &bytes)).unwrap().is_empty());
    (r, bytes)
}

fn part(bytes: &[u8], from: usize, to: usize) -> Message {
    Message::ManifestPart {
        offset: from as u64,
        data: bytes[from..to].to_vec(),
    }
}

/// The receiver's error is a one-line `code` naming the offered package version, and the
/// Abort carrying it is the only message it queues.
fn assert_refused(r: &mut Receiver, err: &Error, code: ProtocolError, m: &Manifest) {
    assert_eq!(code_of(err), Some(code), "{err}");
    let text = err.to_string();
    assert!(!text.contains('\n'), "{text}");
    let name = format!("{} v{}", m.package, m.version);
    assert!(text.contains(&name), "{text}");
    let reason = assert_abort(r.poll_transmit(), code);
    assert!(reason.contains(&name), "{reason}");
    assert!(r.poll_transmit().is_none());
    assert!(r.is_failed());
}

#[test]
fn a_manifest_in_parts_is_checked_part_by_part_and_hashed_at_the_end() {
    let (m, _) = fixture();
    // In order, in parts of 100 bytes: each part handed to the shell, the last completes it.
    let (mut r, bytes) = offered(&m);
    let mut file = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let to = (at + 100).min(bytes.len());
        let ev = r.handle(part(&bytes, at, to)).unwrap();
        match &ev[..] {
            [ReceiverEvent::ManifestPart { data }] => {
                assert!(to < bytes.len() && data.len() == to - at)
            }
            [
                ReceiverEvent::ManifestPart { data },
                ReceiverEvent::ManifestComplete,
            ] => {
                assert_eq!((to, data.len()), (bytes.len(), to - at))
            }
            other => panic!("{other:?}"),
        }
        if let ReceiverEvent::ManifestPart { data } = &ev[0] {
            file.extend_from_slice(data);
        }
        at = to;
    }
    assert_eq!(file, bytes);
    // Decoded by the shell, then looked up.
    let ev = r.manifest_loaded(load(&file, "x")).unwrap();
    let want = freight_core::ChunkTable::of(&m).unwrap();
    assert!(matches!(&ev[..], [ReceiverEvent::Lookup { chunks }] if **chunks == want));
    // A second load is the shell's bug.
    assert!(matches!(
        r.manifest_loaded(load(&file, "x")),
        Err(Error::Misuse(_))
    ));

    // Duplicated part.
    let (mut r, bytes) = offered(&m);
    r.handle(part(&bytes, 0, 100)).unwrap();
    let err = r.handle(part(&bytes, 0, 100)).unwrap_err();
    assert_refused(&mut r, &err, ProtocolError::BadManifest, &m);
    assert!(err.to_string().contains("offset 0, expected 100"), "{err}");
    // Out of order: a gap.
    let (mut r, bytes) = offered(&m);
    r.handle(part(&bytes, 0, 100)).unwrap();
    let err = r.handle(part(&bytes, 200, 300)).unwrap_err();
    assert_refused(&mut r, &err, ProtocolError::BadManifest, &m);
    // Overlapping the previous part.
    let (mut r, bytes) = offered(&m);
    r.handle(part(&bytes, 0, 100)).unwrap();
    let err = r.handle(part(&bytes, 50, 150)).unwrap_err();
    assert_refused(&mut r, &err, ProtocolError::BadManifest, &m);
    // Beyond the declared length.
    let (mut r, bytes) = offered(&m);
    let mut longer = bytes.clone();
    longer.push(0);
    let err = r.handle(part(&longer, 0, longer.len())).unwrap_err();
    assert_refused(&mut r, &err, ProtocolError::BadManifest, &m);
    assert!(
        err.to_string().contains("beyond the offered length"),
        "{err}"
    );
    // A part after the last one.
    let (mut r, bytes) = offered(&m);
    r.handle(part(&bytes, 0, bytes.len())).unwrap();
    let err = r.handle(part(&bytes, 0, 1)).unwrap_err();
    assert_refused(&mut r, &err, ProtocolError::UnexpectedMessage, &m);
    // The right length, the wrong bytes: the hash is checked before anything is decoded.
    let (mut r, bytes) = offered(&m);
    let mut wrong = bytes.clone();
    wrong[bytes.len() / 2] ^= 1;
    r.handle(part(&wrong, 0, 100)).unwrap();
    let err = r.handle(part(&wrong, 100, wrong.len())).unwrap_err();
    assert_refused(&mut r, &err, ProtocolError::BadManifest, &m);
    assert!(err.to_string().contains("hashes to"), "{err}");
    // Need or Done before the manifest is complete.
    for early in [Message::Done, Message::NeedEnd] {
        let (mut r, bytes) = offered(&m);
        r.handle(part(&bytes, 0, 100)).unwrap();
        let err = r.handle(early).unwrap_err();
        assert_refused(&mut r, &err, ProtocolError::UnexpectedMessage, &m);
    }
}

#[test]
fn a_manifest_above_the_defence_limit_is_refused_at_the_offer() {
    let (m, _) = fixture();
    let mut r = Receiver::new();
    r.handle(HELLO).unwrap();
    let err = r
        .handle(Message::Offer {
            package: m.package.clone(),
            version: m.version,
            manifest_len: MAX_MANIFEST_LEN + 1,
            manifest_hash: [1; 32],
        })
        .unwrap_err();
    assert_refused(&mut r, &err, ProtocolError::ManifestTooLarge, &m);
    assert!(
        err.to_string()
            .contains(&(MAX_MANIFEST_LEN + 1).to_string()),
        "{err}"
    );
    // At the limit the offer is taken (its parts would follow).
    let mut r = Receiver::new();
    r.handle(HELLO).unwrap();
    let offer = Message::Offer {
        package: m.package.clone(),
        version: m.version,
        manifest_len: MAX_MANIFEST_LEN,
        manifest_hash: [1; 32],
    };
    assert!(r.handle(offer).unwrap().is_empty());
    // An empty manifest is no manifest.
    let mut r = Receiver::new();
    r.handle(HELLO).unwrap();
    let err = r
        .handle(Message::Offer {
            package: m.package.clone(),
            version: m.version,
            manifest_len: 0,
            manifest_hash: [1; 32],
        })
        .unwrap_err();
    assert_refused(&mut r, &err, ProtocolError::BadManifest, &m);
    // The sender refuses to offer what no receiver takes.
    let err = Sender::offering(
        m.package.clone(),
        m.version,
        Arc::new(freight_core::ChunkTable::of(&m).unwrap()),
        MAX_MANIFEST_LEN + 1,
        [0; 32],
        0,
    )
    .unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains(m.package.as_str()), "{err}");
}

#[test]
fn the_sender_reads_the_manifest_one_part_at_a_time() {
    let (m, _) = fixture();
    let bytes = m.encode();
    let mut s = Sender::new(&m).unwrap();
    s.part_len = 300;
    assert!(matches!(sent(&mut s), Some(Message::Hello { .. })));
    let mut ev = s.handle(HELLO).unwrap();
    assert_eq!(sent(&mut s), Some(offer_of(&m, &bytes)));
    let mut got = Vec::new();
    let mut parts = 0;
    while let [SenderEvent::ReadManifest { offset, len }] = ev[..] {
        assert_eq!(offset as usize, got.len());
        assert!(len <= 300 && len > 0);
        // A part other than the one asked for is the shell's bug, and changes nothing.
        assert!(matches!(
            s.manifest_part(offset + 1, bytes[offset as usize..][..len].to_vec()),
            Err(Error::Misuse(_))
        ));
        ev = s
            .manifest_part(offset, bytes[offset as usize..][..len].to_vec())
            .unwrap();
        let Some(Message::ManifestPart { offset: o, data }) = sent(&mut s) else {
            panic!("no part queued");
        };
        assert_eq!(o as usize, got.len());
        got.extend_from_slice(&data);
        // One part in the outbox at a time.
        assert!(sent(&mut s).is_none());
        parts += 1;
    }
    assert!(ev.is_empty());
    assert_eq!(got, bytes);
    assert_eq!(parts, bytes.len().div_ceil(300));

    // Parts that do not hash to the offered hash (the stored file changed): aborted.
    let mut s = Sender::offering(
        m.package.clone(),
        m.version,
        Arc::new(freight_core::ChunkTable::of(&m).unwrap()),
        bytes.len() as u64,
        [7; 32],
        0,
    )
    .unwrap();
    let ev = s.handle(HELLO).unwrap();
    let [SenderEvent::ReadManifest { offset: 0, len }] = ev[..] else {
        panic!("{ev:?}")
    };
    let err = s.manifest_part(0, bytes[..len].to_vec()).unwrap_err();
    assert_eq!(code_of(&err), Some(ProtocolError::Aborted));
    assert!(s.is_failed());
}

/// A sender of `m` that sent its whole manifest and waits for the `Need` parts.
fn awaiting_need(m: &Manifest) -> Sender {
    let mut s = Sender::new(m).unwrap();
    let ev = s.handle(HELLO).unwrap();
    answer(&mut s, ev, &m.encode(), &Lib::new());
    while sent(&mut s).is_some() {}
    s
}

#[test]
fn need_parts_are_checked_against_the_manifest() {
    let (m, lib) = fixture();
    let ids: Vec<ChunkId> = m.chunks().into_keys().collect();
    let assert_sender_refused = |s: &mut Sender, err: Error, code: ProtocolError| {
        assert_eq!(code_of(&err), Some(code), "{err}");
        let text = err.to_string();
        let name = format!("{} v{}", m.package, m.version);
        assert!(!text.contains('\n') && text.contains(&name), "{text}");
        let queued: Vec<Message> = std::iter::from_fn(|| sent(s)).collect();
        assert!(
            matches!(&queued[..], [Message::Abort { code: c, .. }] if *c == code.code()),
            "{queued:?}"
        );
        assert!(s.is_failed());
    };
    // In parts, then the end: every chunk read, in the order asked.
    let mut s = awaiting_need(&m);
    for p in ids.chunks(6) {
        assert!(
            s.handle(Message::Need { chunks: p.to_vec() })
                .unwrap()
                .is_empty()
        );
    }
    let ev = s.handle(Message::NeedEnd).unwrap();
    let read: Vec<ChunkId> = ev
        .iter()
        .map(|e| match e {
            SenderEvent::ReadChunk(id) => *id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(read, ids);
    answer(&mut s, ev, &[], &lib);
    // A chunk not in the manifest.
    let mut s = awaiting_need(&m);
    let err = s
        .handle(Message::Need {
            chunks: vec![ChunkId::of(b"nope")],
        })
        .unwrap_err();
    assert_sender_refused(&mut s, err, ProtocolError::UnexpectedChunk);
    // The same chunk in two parts.
    let mut s = awaiting_need(&m);
    s.handle(Message::Need {
        chunks: ids[..3].to_vec(),
    })
    .unwrap();
    let err = s
        .handle(Message::Need {
            chunks: ids[2..4].to_vec(),
        })
        .unwrap_err();
    assert!(err.to_string().contains(&ids[2].short()), "{err}");
    assert_sender_refused(&mut s, err, ProtocolError::UnexpectedChunk);
    // A list that does not end: more IDs than the manifest names.
    let mut s = awaiting_need(&m);
    s.handle(Message::Need {
        chunks: ids.clone(),
    })
    .unwrap();
    let err = s
        .handle(Message::Need {
            chunks: ids[..1].to_vec(),
        })
        .unwrap_err();
    assert!(err.to_string().contains("more than the 20"), "{err}");
    assert_sender_refused(&mut s, err, ProtocolError::UnexpectedChunk);
    // Need before the manifest was all sent.
    let mut s = Sender::new(&m).unwrap();
    s.part_len = 10;
    s.handle(HELLO).unwrap();
    let err = s.handle(Message::NeedEnd).unwrap_err();
    assert_eq!(code_of(&err), Some(ProtocolError::UnexpectedMessage));
}

#[test]
fn the_receiver_sends_need_in_bounded_parts_and_an_end() {
    let (m, _) = fixture();
    let mut r = Receiver::new();
    r.need_part = 6;
    r.handle(HELLO).unwrap();
    offer_bytes(&mut r, &m, &m.encode()).unwrap();
    let ids: Vec<ChunkId> = m.chunks().into_keys().collect();
    r.lacking(ids.clone()).unwrap();
    assert!(matches!(r.poll_transmit(), Some(Message::Hello { .. })));
    let out: Vec<Message> = std::iter::from_fn(|| r.poll_transmit()).collect();
    let sizes: Vec<usize> = out
        .iter()
        .map(|m| match m {
            Message::Need { chunks } => chunks.len(),
            Message::NeedEnd => 0,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(sizes, [6, 6, 6, 2, 0]);
    assert_eq!(out.last(), Some(&Message::NeedEnd));
    // The default part is 1 MiB of IDs.
    assert_eq!(Receiver::new().need_part, MAX_NEED_IDS);
    assert_eq!(MAX_NEED_IDS * 32, 1 << 20);
}

/// `Need` parts are made as they are taken, not queued all at once: a receiver lacking a
/// million chunks holds one part at a time, and a chunk that arrived before its part was
/// made is not asked for.
#[test]
fn need_parts_are_made_as_they_are_taken_from_a_mask() {
    let (m, lib) = fixture();
    let mut r = Receiver::new();
    r.need_part = 6;
    r.handle(HELLO).unwrap();
    let ev = offer_bytes(&mut r, &m, &m.encode()).unwrap();
    let [ReceiverEvent::Lookup { chunks }] = &ev[..] else {
        panic!("{ev:?}")
    };
    let chunks = chunks.clone();
    // A mask of the wrong length is the shell's mistake.
    assert!(matches!(
        r.lacking_mask(vec![true; chunks.len() + 1]),
        Err(Error::Misuse(_))
    ));
    let mut mask = vec![true; chunks.len()];
    mask[0] = false;
    r.lacking_mask(mask).unwrap();
    assert!(matches!(r.poll_transmit(), Some(Message::Hello { .. })));
    assert!(r.link.outbox.is_empty(), "nothing queued ahead");
    let Some(Message::Need { chunks: first }) = r.poll_transmit() else {
        panic!("a Need part first")
    };
    assert_eq!(first, (1..7).map(|i| chunks.id(i)).collect::<Vec<_>>());
    // The last chunk arrives (the peer may send any needed one) before its part is made.
    let last = chunks.id(chunks.len() - 1);
    let (ulen, flags, data) = lib[&last].clone();
    r.handle(Message::Chunk {
        id: last,
        ulen,
        flags,
        data,
    })
    .unwrap();
    let rest: Vec<ChunkId> = std::iter::from_fn(|| r.poll_transmit())
        .flat_map(|msg| match msg {
            Message::Need { chunks } => chunks,
            Message::NeedEnd => Vec::new(),
            other => panic!("{other:?}"),
        })
        .collect();
    let want: Vec<ChunkId> = (7..chunks.len() - 1).map(|i| chunks.id(i)).collect();
    assert_eq!(rest, want);
}

#[test]
fn unexpected_order_aborts() {
    let (m, _) = fixture();
    // Receiver: Chunk before Offer.
    let mut r = Receiver::new();
    let err = r
        .handle(Message::Chunk {
            id: ChunkId::of(b"x"),
            ulen: 1,
            flags: 0,
            data: b"x".to_vec(),
        })
        .unwrap_err();
    assert_eq!(code_of(&err), Some(ProtocolError::UnexpectedMessage));
    assert_abort(r.poll_transmit(), ProtocolError::UnexpectedMessage);
    // Later messages are refused without a second Abort.
    assert!(r.handle(Message::Done).is_err());
    assert!(r.poll_transmit().is_none());

    // Sender: Chunk is never valid.
    let mut s = Sender::new(&m).unwrap();
    assert!(matches!(sent(&mut s), Some(Message::Hello { .. })));
    let err = s
        .handle(Message::Chunk {
            id: ChunkId::of(b"x"),
            ulen: 1,
            flags: 0,
            data: b"x".to_vec(),
        })
        .unwrap_err();
    assert_eq!(code_of(&err), Some(ProtocolError::UnexpectedMessage));
    assert_abort(sent(&mut s), ProtocolError::UnexpectedMessage);

    // Sender: NeedEnd twice.
    let hello = HELLO;
    let mut s = awaiting_need(&m);
    let ev = s.handle(Message::NeedEnd).unwrap();
    assert!(ev.is_empty());
    let err = s.handle(Message::NeedEnd).unwrap_err();
    assert_eq!(code_of(&err), Some(ProtocolError::UnexpectedMessage));
    let queued: Vec<Message> = std::iter::from_fn(|| sent(&mut s)).collect();
    assert!(matches!(
        queued.last(),
        Some(Message::Abort { code: 5, .. })
    ));

    // Sender: Committed before Done, then with the wrong hash.
    let mut s = awaiting_need(&m);
    let id = *m.chunks().keys().next().unwrap();
    s.handle(Message::Need { chunks: vec![id] }).unwrap();
    s.handle(Message::NeedEnd).unwrap();
    let err = s.handle(Message::Committed { hash: [0; 32] }).unwrap_err();
    assert_eq!(code_of(&err), Some(ProtocolError::UnexpectedMessage));
    let mut s = awaiting_need(&m);
    s.handle(Message::NeedEnd).unwrap();
    let err = s.handle(Message::Committed { hash: [7; 32] }).unwrap_err();
    assert_eq!(code_of(&err), Some(ProtocolError::BadCommit));
    let queued: Vec<Message> = std::iter::from_fn(|| sent(&mut s)).collect();
    assert!(matches!(
        queued.last(),
        Some(Message::Abort { code: 10, .. })
    ));
    s.handle(hello.clone()).unwrap_err();

    // Sender: Need naming a chunk outside the manifest.
    let mut s = awaiting_need(&m);
    let err = s
        .handle(Message::Need {
            chunks: vec![ChunkId::of(b"nope")],
        })
        .unwrap_err();
    assert_eq!(code_of(&err), Some(ProtocolError::UnexpectedChunk));

    // Shell misuse is reported, not sent.
    let mut s = Sender::new(&m).unwrap();
    assert!(matches!(
        s.chunk_ready(id, 1, 0, vec![0]),
        Err(Error::Misuse(_))
    ));
    let mut r = Receiver::new();
    assert!(matches!(r.committed(), Err(Error::Misuse(_))));
    assert!(matches!(r.lacking([id]), Err(Error::Misuse(_))));
    assert!(matches!(
        r.manifest_loaded(freight_core::ManifestChunks::of(&m)),
        Err(Error::Misuse(_))
    ));
    assert!(r.poll_transmit().is_none());
}

#[test]
fn peer_abort_becomes_error() {
    let (m, _) = fixture();
    let mut s = Sender::new(&m).unwrap();
    let err = s
        .handle(Message::abort(ProtocolError::Aborted, "disk full"))
        .unwrap_err();
    assert!(
        matches!(&err, Error::PeerAborted { code: 11, reason } if reason == "disk full"),
        "{err:?}"
    );
    assert!(err.to_string().contains("aborted"));
    assert!(s.is_failed());
    let mut r = Receiver::new();
    r.abort("shutting down");
    assert_abort(r.poll_transmit(), ProtocolError::Aborted);
}

#[test]
fn version_negotiation() {
    let (m, _) = fixture();
    // A version-1 peer (manifests in one frame) is refused in one line saying so.
    let mut r = Receiver::new();
    let err = r
        .handle(Message::Hello {
            version_min: 1,
            version_max: 1,
        })
        .unwrap_err();
    assert_eq!(code_of(&err), Some(ProtocolError::VersionMismatch));
    let reason = assert_abort(r.poll_transmit(), ProtocolError::VersionMismatch);
    assert!(
        reason.contains("1..=1") && reason.contains("2..=2"),
        "{reason}"
    );
    assert!(!err.to_string().contains('\n'));
    let mut r = Receiver::new();
    let err = r
        .handle(Message::Hello {
            version_min: 3,
            version_max: 5,
        })
        .unwrap_err();
    assert_eq!(code_of(&err), Some(ProtocolError::VersionMismatch));
    assert_abort(r.poll_transmit(), ProtocolError::VersionMismatch);
    // Inverted range: no overlap either.
    let mut r = Receiver::new();
    let err = r
        .handle(Message::Hello {
            version_min: 1,
            version_max: 0,
        })
        .unwrap_err();
    assert_eq!(code_of(&err), Some(ProtocolError::VersionMismatch));

    let mut s = Sender::new(&m).unwrap();
    s.poll_transmit();
    let err = s
        .handle(Message::Hello {
            version_min: 1,
            version_max: 1,
        })
        .unwrap_err();
    assert_eq!(code_of(&err), Some(ProtocolError::VersionMismatch));
    assert_abort(sent(&mut s), ProtocolError::VersionMismatch);

    let mut s = Sender::new(&m).unwrap();
    s.handle(Message::Hello {
        version_min: 0,
        version_max: 9,
    })
    .unwrap();
    assert_eq!(s.protocol_version(), Some(2));
}
