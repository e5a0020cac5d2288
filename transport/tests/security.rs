//! Refusals over real QUIC on loopback: untrusted, revoked and unbound keys at the handshake,
//! chunks that do not match their ID, malformed and unexpected frames. Each ends with an error
//! that names the key or the violation, nothing bad is stored, and the receiver keeps serving.

mod common;

use common::*;
use freight_core::{ChunkId, PackageId, SiteKey, TrustStore};
use freight_transport::Error;
use freight_transport::protocol::{FrameDecoder, MAX_FRAME, Message, ProtocolError, encode};
use freight_transport::quic::Node;
use freight_transport::session::{PushOptions, PushReport, push};
use freight_transport::store::SharedLibrary;
use freight_transport::tls::{SiteTls, site_certificate, site_dns_name};
use std::time::Duration;

/// Three sites: CAS and PS1 trust each other; the test decides about the third.
struct World {
    t: tempfile::TempDir,
    cas: Site,
    ps1: Site,
}

fn world() -> World {
    let t = tempfile::tempdir().unwrap();
    let (cas, ps1) = (Site::new(t.path(), "CAS"), Site::new(t.path(), "PS1"));
    cas.trusts(&ps1);
    ps1.trusts(&cas);
    World { t, cas, ps1 }
}

/// Connects with `tls` to a PS1 node and returns (client error, server error).
async fn handshake(w: &World, tls: SiteTls) -> (Error, Error) {
    let server = Node::bind("127.0.0.1:0".parse().unwrap(), w.ps1.tls(), fast_config()).unwrap();
    let addr = server.local_addr().unwrap();
    let accepting = tokio::spawn({
        let server = server.clone();
        async move { server.accept().await.unwrap().establish().await }
    });
    let client = Node::bind("127.0.0.1:0".parse().unwrap(), tls, fast_config()).unwrap();
    let c = client.connect(addr, code("PS1")).await;
    let s = tokio::time::timeout(Duration::from_secs(5), accepting)
        .await
        .unwrap()
        .unwrap();
    (
        c.expect_err("client must be refused"),
        s.expect_err("server must refuse"),
    )
}

fn assert_one_line(e: &Error) -> String {
    let s = e.to_string();
    assert!(!s.contains('\n') && !s.is_empty(), "{s:?}");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_is_refused_at_the_handshake() {
    let w = world();
    let stranger = Site::new(w.t.path(), "XYZ");
    stranger.trusts(&w.ps1);
    let (client, server) = handshake(&w, stranger.tls()).await;
    let fp = stranger.key.identity().fingerprint();
    let s = assert_one_line(&server);
    assert!(
        s.contains(&fp) && s.contains("XYZ") && s.contains("not in the trust store"),
        "{s}"
    );
    // The refused side learns why from the peer's close reason.
    let c = assert_one_line(&client);
    assert!(c.contains(&fp), "{c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_key_is_refused_at_the_handshake() {
    let w = world();
    TrustStore::open(&w.ps1.trust)
        .unwrap()
        .revoke(code("CAS"))
        .unwrap();
    let (client, server) = handshake(&w, w.cas.tls()).await;
    let fp = w.cas.key.identity().fingerprint();
    let s = assert_one_line(&server);
    assert!(s.contains(&fp) && s.contains("revoked"), "{s}");
    assert!(assert_one_line(&client).contains(&fp));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_not_bound_to_the_site_key_is_refused() {
    let w = world();
    // 1. Another key claiming to be CAS (its certificate is self-signed, but by the wrong key).
    let impostor = SiteKey::load_or_create(&w.t.path().join("impostor.key"), code("CAS")).unwrap();
    let (_, server) = handshake(&w, SiteTls::new(&impostor, &w.cas.trust).unwrap()).await;
    let s = assert_one_line(&server);
    assert!(s.contains(&impostor.identity().fingerprint()), "{s}");
    assert!(
        s.contains(&w.cas.key.identity().fingerprint()),
        "names the trusted key: {s}"
    );

    // 2. CAS's own key in a certificate signed by another key: not bound to the site key,
    //    although the TLS handshake itself is made with CAS's key.
    let pkcs8 = w.cas.key.pkcs8_der();
    let der = rustls::pki_types::PrivatePkcs8KeyDer::from(pkcs8.as_slice());
    let cas_pair =
        rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ED25519).unwrap();
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let params = rcgen::CertificateParams::new(vec![site_dns_name(code("CAS"))]).unwrap();
    let issuer = rcgen::Issuer::new(
        rcgen::CertificateParams::new(vec!["evil".to_string()]).unwrap(),
        &other,
    );
    let forged = params.signed_by(&cas_pair, &issuer).unwrap().der().clone();
    let tls = SiteTls::with_certificate(&w.cas.key, forged, &w.cas.trust).unwrap();
    let (_, server) = handshake(&w, tls).await;
    let s = assert_one_line(&server);
    assert!(
        s.contains("not bound") && s.contains(&w.cas.key.identity().fingerprint()),
        "{s}"
    );

    // 3. A certificate naming two sites is not a site certificate.
    let params =
        rcgen::CertificateParams::new(vec![site_dns_name(code("CAS")), site_dns_name(code("PS1"))])
            .unwrap();
    let two = params.self_signed(&cas_pair).unwrap().der().clone();
    let (_, server) = handshake(
        &w,
        SiteTls::with_certificate(&w.cas.key, two, &w.cas.trust).unwrap(),
    )
    .await;
    assert!(assert_one_line(&server).contains("exactly one site"));

    // The genuine certificate still works.
    assert_eq!(
        freight_transport::tls::certificate_identity(&site_certificate(&w.cas.key).unwrap())
            .unwrap(),
        w.cas.key.identity()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_refuses_a_server_of_another_site() {
    let w = world();
    let ps2 = Site::new(w.t.path(), "PS2");
    ps2.trusts(&w.cas);
    w.cas.trusts(&ps2);
    let server = Node::bind("127.0.0.1:0".parse().unwrap(), ps2.tls(), fast_config()).unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(async move { server.accept().await.unwrap().establish().await });
    let client = Node::bind("127.0.0.1:0".parse().unwrap(), w.cas.tls(), fast_config()).unwrap();
    // CAS trusts PS2, but wanted PS1 at this address.
    let e = client.connect(addr, code("PS1")).await.unwrap_err();
    let s = assert_one_line(&e);
    assert!(
        s.contains("PS2")
            && s.contains("not site PS1")
            && s.contains(&ps2.key.identity().fingerprint()),
        "{s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_that_does_not_match_its_id_is_rejected_and_not_stored() {
    let w = world();
    let cas_lib = w.t.path().join("cas-lib");
    let m = ingest_tree(&cas_lib, &w.t.path().join("src"), "CAS00001", 1, 6 << 20, 3);
    // Corrupt one stored chunk in the sender's library.
    let (victim, loc, pack) = {
        let lib = library(&cas_lib);
        let id = *m.chunks().keys().nth(m.chunks().len() / 2).unwrap();
        let loc = lib.locate(&id).unwrap();
        (id, loc, lib.pack_path(loc.pack))
    };
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[(loc.offset + loc.clen as u64 / 2) as usize] ^= 0x5a;
    std::fs::write(&pack, bytes).unwrap();

    let mut rx = receiving(&w.ps1, &w.t.path().join("ps1-lib"), fast_config());
    let (_node, conn) = connect(&w.cas, &rx, "PS1").await;
    let lib = SharedLibrary::new(library(&cas_lib));
    let mut report = PushReport::default();
    let err = push(&conn, &lib, &m, &PushOptions::default(), &mut report)
        .await
        .unwrap_err();
    match &err {
        Error::PeerAborted { code, reason } => {
            assert_eq!(*code, ProtocolError::BadChunk.code(), "{err}");
            assert!(reason.contains(&victim.short()), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!report.committed);
    let ev = rx.events.recv().await.unwrap();
    let recv_err = ev.result.unwrap_err();
    assert!(
        recv_err.to_string().contains(&victim.short())
            && recv_err.to_string().contains("not stored"),
        "{recv_err}"
    );
    // Nothing bad stored: not the chunk, not the manifest; the good chunks before it may stay.
    rx.lib.flush().await.unwrap();
    let recv = rx.lib.read();
    assert!(!recv.has_chunk(&victim));
    assert!(
        recv.manifest(&PackageId::parse("CAS00001").unwrap(), 1)
            .is_err()
    );
}

/// Opens a raw session on `conn` with the push preamble, writes `bytes`, and returns what the
/// receiver answers on the control stream until it closes it.
async fn raw_session(conn: &quinn::Connection, bytes: &[u8]) -> Vec<Message> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut pre = vec![1u8];
    pre.extend_from_slice(&1u16.to_le_bytes());
    pre.extend_from_slice(bytes);
    send.write_all(&pre).await.unwrap();
    let _ = send.finish();
    let got = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1 << 20))
        .await
        .expect("receiver answers")
        .unwrap_or_default();
    let mut dec = FrameDecoder::new();
    dec.push(&got);
    std::iter::from_fn(|| dec.next_message().ok().flatten()).collect()
}

fn abort_code(msgs: &[Message]) -> Option<u16> {
    msgs.iter().find_map(|m| match m {
        Message::Abort { code, .. } => Some(*code),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oversized_and_unexpected_frames_end_the_session_with_a_code() {
    let w = world();
    let cas_lib = w.t.path().join("cas-lib");
    let m = ingest_tree(&cas_lib, &w.t.path().join("src"), "CAS00001", 1, 2 << 20, 5);
    let mut rx = receiving(&w.ps1, &w.t.path().join("ps1-lib"), fast_config());
    let (_node, conn) = connect(&w.cas, &rx, "PS1").await;
    let raw = conn.connection();
    let hello = encode(&Message::Hello {
        version_min: 2,
        version_max: 2,
    });

    // An Offer one byte over the limit of every message but Chunk, and a Chunk one byte over
    // the library's largest chunk.
    let mut oversized = (MAX_FRAME + 1).to_le_bytes().to_vec();
    oversized.push(2);
    let mut oversized_chunk = (freight_transport::protocol::MAX_CHUNK_FRAME + 1)
        .to_le_bytes()
        .to_vec();
    oversized_chunk.push(4);
    let mut unknown = 1u32.to_le_bytes().to_vec();
    unknown.push(99);
    let mut short_hello = 3u32.to_le_bytes().to_vec();
    short_hello.extend_from_slice(&[1, 1, 0]);
    let chunk_on_control = [
        hello.clone(),
        encode(&Message::Chunk {
            id: ChunkId([7; 32]),
            ulen: 1,
            flags: 0,
            data: vec![0],
        }),
    ]
    .concat();
    let done_first = encode(&Message::Done);
    let done_first_again = done_first.clone();
    let offer = |bytes: &[u8], len: u64| {
        encode(&Message::Offer {
            package: PackageId::parse("CAS00001").unwrap(),
            version: 1,
            manifest_len: len,
            manifest_hash: *blake3::hash(bytes).as_bytes(),
        })
    };
    let part = |offset: u64, bytes: &[u8]| {
        encode(&Message::ManifestPart {
            offset,
            data: bytes.to_vec(),
        })
    };
    let junk = b"not a manifest";
    let bad_offer = [hello.clone(), offer(junk, 14), part(0, junk)].concat();
    let huge_offer = [
        hello.clone(),
        offer(junk, freight_transport::MAX_MANIFEST_LEN + 1),
    ]
    .concat();
    let wrong_hash = [hello.clone(), offer(b"something else", 14), part(0, junk)].concat();
    let part_twice = [
        hello.clone(),
        offer(junk, 14),
        part(0, &junk[..4]),
        part(0, &junk[..4]),
    ]
    .concat();
    let part_beyond = [hello.clone(), offer(junk, 10), part(0, junk)].concat();
    let old_peer = encode(&Message::Hello {
        version_min: 1,
        version_max: 1,
    });
    let wrong_version = encode(&Message::Hello {
        version_min: 7,
        version_max: 9,
    });
    let cases: Vec<(&str, Vec<u8>, ProtocolError)> = vec![
        ("oversized frame", oversized, ProtocolError::FrameTooLarge),
        (
            "oversized chunk frame",
            oversized_chunk,
            ProtocolError::FrameTooLarge,
        ),
        ("unknown type", unknown, ProtocolError::UnknownType),
        ("truncated payload", short_hello, ProtocolError::Malformed),
        (
            "chunk on the control stream",
            chunk_on_control,
            ProtocolError::UnexpectedMessage,
        ),
        (
            "Done before Hello",
            done_first,
            ProtocolError::UnexpectedMessage,
        ),
        ("bad manifest", bad_offer, ProtocolError::BadManifest),
        (
            "manifest above the defence limit",
            huge_offer,
            ProtocolError::ManifestTooLarge,
        ),
        (
            "manifest hash mismatch",
            wrong_hash,
            ProtocolError::BadManifest,
        ),
        (
            "manifest part twice",
            part_twice,
            ProtocolError::BadManifest,
        ),
        (
            "manifest part beyond its length",
            part_beyond,
            ProtocolError::BadManifest,
        ),
        ("a version-1 peer", old_peer, ProtocolError::VersionMismatch),
        (
            "no common version",
            wrong_version,
            ProtocolError::VersionMismatch,
        ),
    ];
    let pending = w.t.path().join("ps1-lib").join("pending");
    for (what, bytes, want) in cases {
        let answer = raw_session(raw, &bytes).await;
        assert_eq!(abort_code(&answer), Some(want.code()), "{what}: {answer:?}");
        let ev = rx.events.recv().await.unwrap();
        assert!(ev.result.is_err(), "{what}");
        assert_one_line(&ev.result.unwrap_err());
        // The parts received before the refusal are not left behind.
        let left: Vec<_> = std::fs::read_dir(&pending)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "{what}: {left:?}");
    }

    // A data stream for a session that does not exist is refused on its own: the stream is
    // stopped, while the connection and its other sessions go on.
    let mut uni = raw.open_uni().await.unwrap();
    let mut head = vec![2u8];
    head.extend_from_slice(&999u64.to_le_bytes());
    head.extend_from_slice(&0u16.to_le_bytes());
    uni.write_all(&head).await.unwrap();
    uni.write_all(&[0u8; 4096]).await.unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(5), uni.stopped())
        .await
        .unwrap();
    assert!(matches!(stopped, Ok(Some(_))), "{stopped:?}");
    assert!(raw.close_reason().is_none(), "the connection was closed");
    let answer = raw_session(raw, &done_first_again).await;
    assert_eq!(
        abort_code(&answer),
        Some(ProtocolError::UnexpectedMessage.code()),
        "a session after the refused stream: {answer:?}"
    );
    assert!(rx.events.recv().await.unwrap().result.is_err());

    // The receiver still serves: a proper push on a new connection succeeds.
    let (_node, conn) = connect(&w.cas, &rx, "PS1").await;
    let lib = SharedLibrary::new(library(&cas_lib));
    let mut report = PushReport::default();
    push(&conn, &lib, &m, &PushOptions::default(), &mut report)
        .await
        .unwrap();
    assert!(report.committed);
}
