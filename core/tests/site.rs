//! Site keys, the trust store and signed instructions on real files: key file rules, identity
//! export/import, revocation, and every refusal of `SignedInstruction::verify`.

use freight_core::{
    Error, Instruction, InstructionKind, PackageId, PublicIdentity, Role, SignedInstruction,
    SiteCode, SiteKey, TrustStore,
};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn code(s: &str) -> SiteCode {
    SiteCode::parse(s).unwrap()
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn instruction(origin: &str, destination: &str, version: u32) -> Instruction {
    Instruction {
        kind: InstructionKind::Package,
        origin: code(origin),
        destination: code(destination),
        package: PackageId::parse("CAS0001F").unwrap(),
        version,
        base_version: None,
        manifest_hash: *blake3::hash(b"manifest").as_bytes(),
        created_unix: 1_760_000_000,
        sequence: 9,
        notes: "courier parcel 12, handed to J. Doe".into(),
    }
}

/// A sending site CAS and a receiving site PS1 that trusts CAS's key.
struct Pair {
    _dir: tempfile::TempDir,
    cas: SiteKey,
    trust: TrustStore,
    root: std::path::PathBuf,
}

fn pair() -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let cas = SiteKey::load_or_create(&root.join("cas/site.key"), code("CAS")).unwrap();
    let trust = TrustStore::open(&root.join("ps1/trust")).unwrap();
    let mailed = cas.identity().to_text();
    trust
        .import(&PublicIdentity::from_text(&mailed).unwrap(), Role::Parent)
        .unwrap();
    Pair {
        _dir: dir,
        cas,
        trust,
        root,
    }
}

fn one_line(e: &Error) {
    let s = e.to_string();
    assert!(!s.contains('\n') && !s.is_empty(), "{s:?}");
}

#[test]
fn key_file_is_private_created_once_and_guarded() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("site/site.key");
    let key = SiteKey::load_or_create(&path, code("CAS")).unwrap();
    assert_eq!(mode_of(&path), 0o600);
    assert_eq!(key.code(), code("CAS"));

    // Reloaded, not recreated.
    let again = SiteKey::load_or_create(&path, code("CAS")).unwrap();
    assert_eq!(again.identity(), key.identity());
    let sig = again.sign(b"msg");
    assert!(key.identity().verify(b"msg", &sig));

    // The secret never shows in Debug, in hex or as the byte array.
    let text = std::fs::read_to_string(&path).unwrap();
    let secret_hex = text
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .expect("secret line")
        .to_string();
    let secret: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&secret_hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    for shown in [format!("{key:?}"), format!("{key:#?}")] {
        assert!(!shown.to_lowercase().contains(&secret_hex), "{shown}");
        assert!(!shown.contains(&format!("{secret:?}")), "{shown}");
        assert!(!shown.contains(&format!("{:?}", &secret[..8])), "{shown}");
        assert!(shown.contains("CAS") && shown.contains(&key.identity().fingerprint()));
    }

    // Readable by others: refused, with the mode in the error.
    for mode in [0o644, 0o640, 0o604, 0o660] {
        chmod(&path, mode);
        match SiteKey::load_or_create(&path, code("CAS")) {
            Err(ref e @ Error::KeyFileMode { mode: m, .. }) => {
                assert_eq!(m, mode);
                one_line(e);
            }
            r => panic!("mode {mode:o}: {r:?}"),
        }
        // The refused file is left alone, not replaced by a new key.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }
    chmod(&path, 0o600);
    assert_eq!(
        SiteKey::load_or_create(&path, code("CAS"))
            .unwrap()
            .identity(),
        key.identity()
    );

    // The key of another site is not loaded as this site's.
    assert!(matches!(
        SiteKey::load_or_create(&path, code("PS1")),
        Err(Error::BadKeyFile { .. })
    ));
}

#[test]
fn malformed_key_files_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("site.key");
    let key = SiteKey::load_or_create(&path, code("CAS")).unwrap();
    let good = std::fs::read_to_string(&path).unwrap();
    let other = SiteKey::load_or_create(&t.path().join("other.key"), code("CAS")).unwrap();
    let other_key = hex(&other.identity().key);
    let secret_line = good.lines().find(|l| l.starts_with("secret: ")).unwrap();
    let broken = [
        String::new(),
        good.replace("freight-site-key v1", "freight-site-key v2"),
        good.replace("secret: ", "secret: 0"),
        good.replace(secret_line, &format!("secret: g{}", &secret_line[9..])),
        good.replace(&hex(&key.identity().key), &other_key),
        good.lines().take(3).collect::<Vec<_>>().join("\n"),
        format!("{good}more: 1\n"),
        "x".repeat(10_000),
    ];
    for (i, text) in broken.iter().enumerate() {
        std::fs::write(&path, text).unwrap();
        chmod(&path, 0o600);
        match SiteKey::load_or_create(&path, code("CAS")) {
            Err(ref e @ Error::BadKeyFile { .. }) => one_line(e),
            r => panic!("case {i}: {r:?}"),
        }
        // Never silently replaced.
        assert_eq!(&std::fs::read_to_string(&path).unwrap(), text);
    }

    // A symlink to a valid key is refused too.
    std::fs::write(&path, &good).unwrap();
    chmod(&path, 0o600);
    let link = t.path().join("link.key");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    assert!(matches!(
        SiteKey::load_or_create(&link, code("CAS")),
        Err(Error::BadKeyFile { .. })
    ));
    assert_eq!(
        SiteKey::load_or_create(&path, code("CAS"))
            .unwrap()
            .identity(),
        key.identity()
    );
}

#[test]
fn racing_creators_agree_on_one_key() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("site.key");
    let start = std::sync::Barrier::new(16);
    let ids: Vec<PublicIdentity> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    SiteKey::load_or_create(&path, code("CAS"))
                        .unwrap()
                        .identity()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let on_disk = SiteKey::load_or_create(&path, code("CAS"))
        .unwrap()
        .identity();
    assert!(ids.iter().all(|id| *id == on_disk), "{ids:?}");
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("site.key")]);
}

#[test]
fn identity_export_import_round_trip_and_tampering() {
    let p = pair();
    let id = p.cas.identity();
    assert_eq!(p.trust.lookup(code("CAS")).unwrap(), id);

    let text = id.to_text();
    assert!(text.starts_with("freight-site-identity v1\nsite: CAS\n"));
    assert!(text.contains(&format!("fingerprint: {}\n", id.fingerprint())));

    // Change one character of the fingerprint line.
    let fp = id.fingerprint();
    let first = fp.chars().next().unwrap();
    let changed = if first == '0' { '1' } else { '0' };
    let tampered_fp = format!("{changed}{}", &fp[1..]);
    let tampered = text.replace(&fp, &tampered_fp);
    match PublicIdentity::from_text(&tampered) {
        Err(
            ref e @ Error::FingerprintMismatch {
                ref stated,
                ref actual,
                ..
            },
        ) => {
            assert_eq!(stated, &tampered_fp);
            assert_eq!(actual, &fp);
            one_line(e);
        }
        r => panic!("{r:?}"),
    }

    // The stored file is the identity text and survives reopening.
    let again = TrustStore::open(&p.root.join("ps1/trust")).unwrap();
    assert_eq!(again.lookup(code("CAS")).unwrap(), id);
    let stored = std::fs::read_to_string(p.root.join("ps1/trust/CAS.identity")).unwrap();
    assert_eq!(stored, text);
}

#[test]
fn trust_store_import_conflict_revoke_and_reimport() {
    let p = pair();
    let old = p.cas.identity();
    let new_key = SiteKey::load_or_create(&p.root.join("cas/new.key"), code("CAS")).unwrap();
    let new = new_key.identity();

    // Same key again: no-op. Another key for a trusted site: refused.
    p.trust.import(&old, Role::Parent).unwrap();
    match p.trust.import(&new, Role::Parent) {
        Err(
            ref e @ Error::KeyConflict {
                ref trusted,
                ref offered,
                ..
            },
        ) => {
            assert_eq!(trusted, &old.fingerprint());
            assert_eq!(offered, &new.fingerprint());
            one_line(e);
        }
        r => panic!("{r:?}"),
    }
    assert_eq!(p.trust.lookup(code("CAS")).unwrap(), old);

    // Unknown sites are unknown, for lookup and revoke alike.
    for r in [
        p.trust.lookup(code("ZZZ")).map(|_| ()),
        p.trust.revoke(code("ZZZ")),
    ] {
        match r {
            Err(ref e @ Error::UnknownSite(ref s)) => {
                assert_eq!(s, "ZZZ");
                one_line(e);
            }
            r => panic!("{r:?}"),
        }
    }

    // Revoked: refused as revoked (not unknown), also across reopening; revoking twice is fine.
    p.trust.revoke(code("CAS")).unwrap();
    p.trust.revoke(code("CAS")).unwrap();
    let reopened = TrustStore::open(&p.root.join("ps1/trust")).unwrap();
    for store in [&p.trust, &reopened] {
        match store.lookup(code("CAS")) {
            Err(
                ref e @ Error::RevokedKey {
                    ref site,
                    ref fingerprint,
                },
            ) => {
                assert_eq!(site, "CAS");
                assert_eq!(fingerprint, &old.fingerprint());
                one_line(e);
            }
            r => panic!("{r:?}"),
        }
    }
    assert!(matches!(
        p.trust.import(&old, Role::Parent),
        Err(Error::RevokedKey { .. })
    ));
    let listed = p.trust.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].revoked && listed[0].identity == old);

    // The site's new key can now be imported; the old one stays refused.
    p.trust.import(&new, Role::Parent).unwrap();
    assert_eq!(p.trust.lookup(code("CAS")).unwrap(), new);
    assert!(matches!(
        p.trust.import(&old, Role::Parent),
        Err(Error::RevokedKey { .. })
    ));
    let listed = p.trust.list().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().any(|e| e.identity == new && !e.revoked));
    assert!(listed.iter().any(|e| e.identity == old && e.revoked));

    // Instructions signed with the revoked key are refused as revoked, with the new one accepted.
    let ps1 = code("PS1");
    let by_old = instruction("CAS", "PS1", 1).sign(&p.cas).unwrap();
    match by_old.verify(&p.trust, &ps1, None) {
        Err(Error::RevokedKey { fingerprint, .. }) => assert_eq!(fingerprint, old.fingerprint()),
        r => panic!("{r:?}"),
    }
    let by_new = instruction("CAS", "PS1", 1).sign(&new_key).unwrap();
    assert!(by_new.verify(&p.trust, &ps1, None).is_ok());

    // Revoke the second key as well: both are kept, lookup reports the latest.
    p.trust.revoke(code("CAS")).unwrap();
    match p.trust.lookup(code("CAS")) {
        Err(Error::RevokedKey { fingerprint, .. }) => assert_eq!(fingerprint, new.fingerprint()),
        r => panic!("{r:?}"),
    }
    assert_eq!(
        p.trust.list().unwrap().iter().filter(|e| e.revoked).count(),
        2
    );
}

#[test]
fn authenticate_names_the_presented_key_in_each_refusal() {
    let p = pair();
    let old = p.cas.identity();
    let stranger = SiteKey::load_or_create(&p.root.join("x/site.key"), code("CAS")).unwrap();
    let stranger = stranger.identity();

    assert_eq!(p.trust.authenticate(code("CAS"), &old.key).unwrap(), old);
    match p.trust.authenticate(code("ZZZ"), &old.key) {
        Err(ref e @ Error::UnknownSite(ref s)) => {
            assert_eq!(s, "ZZZ");
            one_line(e);
        }
        r => panic!("{r:?}"),
    }
    match p.trust.authenticate(code("CAS"), &stranger.key) {
        Err(
            ref e @ Error::WrongKey {
                ref presented,
                ref trusted,
                ..
            },
        ) => {
            assert_eq!(presented, &stranger.fingerprint());
            assert_eq!(trusted, &old.fingerprint());
            one_line(e);
        }
        r => panic!("{r:?}"),
    }
    // Revoked, with or without a newer key imported: the presented key is named.
    p.trust.revoke(code("CAS")).unwrap();
    for presented in [old, stranger] {
        match p.trust.authenticate(code("CAS"), &presented.key) {
            Err(
                ref e @ Error::RevokedKey {
                    ref fingerprint, ..
                },
            ) => {
                assert_eq!(fingerprint, &presented.fingerprint());
                one_line(e);
            }
            r => panic!("{r:?}"),
        }
    }
    p.trust.import(&stranger, Role::Parent).unwrap();
    assert_eq!(
        p.trust.authenticate(code("CAS"), &stranger.key).unwrap(),
        stranger
    );
    match p.trust.authenticate(code("CAS"), &old.key) {
        Err(Error::RevokedKey { fingerprint, .. }) => assert_eq!(fingerprint, old.fingerprint()),
        r => panic!("{r:?}"),
    }
}

#[test]
fn pkcs8_export_holds_the_site_key() {
    let p = pair();
    let der = p.cas.pkcs8_der();
    assert_eq!(der.len(), 48);
    // The last 32 bytes are the seed: the public key derived from it is the site's.
    let seed: [u8; 32] = der[16..].try_into().unwrap();
    let derived = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
    assert_eq!(derived.to_bytes(), p.cas.identity().key);
}

#[test]
fn a_crash_during_revoke_never_brings_the_key_back() {
    let p = pair();
    let trusted = p.root.join("ps1/trust/CAS.identity");
    let saved = std::fs::read(&trusted).unwrap();
    p.trust.revoke(code("CAS")).unwrap();
    // As if the crash came after the revocation was written but before the removal.
    std::fs::write(&trusted, saved).unwrap();
    assert!(matches!(
        p.trust.lookup(code("CAS")),
        Err(Error::RevokedKey { .. })
    ));
    let signed = instruction("CAS", "PS1", 1).sign(&p.cas).unwrap();
    assert!(matches!(
        signed.verify(&p.trust, &code("PS1"), None),
        Err(Error::RevokedKey { .. })
    ));
    let listed = p.trust.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].revoked);
}

#[test]
fn a_damaged_trust_file_is_reported() {
    let p = pair();
    let trusted = p.root.join("ps1/trust/CAS.identity");
    let text = std::fs::read_to_string(&trusted).unwrap();
    std::fs::write(&trusted, text.replace("site: CAS", "site: PS1")).unwrap();
    // The fingerprint is over the key only, so the text parses; the file name disagrees.
    assert!(matches!(
        p.trust.lookup(code("CAS")),
        Err(Error::BadTrustStore { .. })
    ));
    std::fs::write(&trusted, "garbage").unwrap();
    assert!(matches!(
        p.trust.lookup(code("CAS")),
        Err(Error::BadIdentity { .. })
    ));
}

#[test]
fn verify_accepts_a_good_instruction_and_applies_the_version_rule() {
    let p = pair();
    let ps1 = code("PS1");
    let ins = instruction("CAS", "PS1", 5);
    let signed = ins.sign(&p.cas).unwrap();
    let wire = signed.encode();
    let received = SignedInstruction::decode(&wire).unwrap();
    assert_eq!(received.verify(&p.trust, &ps1, None).unwrap(), ins);
    assert_eq!(received.verify(&p.trust, &ps1, Some(4)).unwrap(), ins);
    // Same version again is a re-delivery.
    assert_eq!(received.verify(&p.trust, &ps1, Some(5)).unwrap(), ins);
    match received.verify(&p.trust, &ps1, Some(6)) {
        Err(
            ref e @ Error::OlderVersion {
                ref package,
                offered,
                stored,
            },
        ) => {
            assert_eq!(package, "CAS0001F");
            assert_eq!((offered, stored), (5, 6));
            one_line(e);
        }
        r => panic!("{r:?}"),
    }

    // A delta round trips through signing too.
    let mut delta = instruction("CAS", "PS1", 7);
    delta.kind = InstructionKind::Delta;
    delta.base_version = Some(6);
    let got = delta.sign(&p.cas).unwrap().verify(&p.trust, &ps1, Some(6));
    assert_eq!(got.unwrap(), delta);
}

#[test]
fn verify_refusals_each_have_their_own_error() {
    let p = pair();
    let ps1 = code("PS1");

    // Unknown origin: a site PS2 nobody imported.
    let ps2 = SiteKey::load_or_create(&p.root.join("ps2.key"), code("PS2")).unwrap();
    let from_ps2 = instruction("PS2", "PS1", 1).sign(&ps2).unwrap();
    match from_ps2.verify(&p.trust, &ps1, None) {
        Err(ref e @ Error::UnknownSite(ref s)) => {
            assert_eq!(s, "PS2");
            one_line(e);
        }
        r => panic!("{r:?}"),
    }

    // Wrong destination.
    let to_ps3 = instruction("CAS", "PS3", 1).sign(&p.cas).unwrap();
    match to_ps3.verify(&p.trust, &ps1, None) {
        Err(
            ref e @ Error::WrongDestination {
                ref destination,
                ref this_site,
            },
        ) => {
            assert_eq!((destination.as_str(), this_site.as_str()), ("PS3", "PS1"));
            one_line(e);
        }
        r => panic!("{r:?}"),
    }

    // Bad signature: one bit of the signature changed.
    let mut tampered = instruction("CAS", "PS1", 1).sign(&p.cas).unwrap();
    tampered.signature[10] ^= 0x01;
    match tampered.verify(&p.trust, &ps1, None) {
        Err(
            ref e @ Error::BadSignature {
                ref origin,
                ref fingerprint,
            },
        ) => {
            assert_eq!(origin, "CAS");
            assert_eq!(fingerprint, &p.cas.identity().fingerprint());
            one_line(e);
        }
        r => panic!("{r:?}"),
    }

    // Tampered body that still decodes (the version raised): bad signature.
    let good = instruction("CAS", "PS1", 1).sign(&p.cas).unwrap();
    let mut raised = instruction("CAS", "PS1", 1);
    raised.version = 2;
    let forged = SignedInstruction {
        body: raised.encode(),
        signature: good.signature,
    };
    assert!(matches!(
        forged.verify(&p.trust, &ps1, None),
        Err(Error::BadSignature { .. })
    ));

    // A key of "CAS" that is not the one imported (an impostor).
    let impostor = SiteKey::load_or_create(&p.root.join("impostor.key"), code("CAS")).unwrap();
    assert_ne!(impostor.identity(), p.cas.identity());
    let by_impostor = instruction("CAS", "PS1", 1).sign(&impostor).unwrap();
    assert!(matches!(
        by_impostor.verify(&p.trust, &ps1, None),
        Err(Error::BadSignature { .. })
    ));

    // The key of another (even trusted) site, used on an instruction claiming to come from CAS.
    p.trust.import(&ps2.identity(), Role::Parent).unwrap();
    let body = instruction("CAS", "PS1", 1).encode();
    let by_ps2 = SignedInstruction {
        signature: ps2.sign(&body),
        body,
    };
    assert!(matches!(
        by_ps2.verify(&p.trust, &ps1, None),
        Err(Error::BadSignature { .. })
    ));

    // Signing with another site's key is refused up front.
    match instruction("CAS", "PS1", 1).sign(&ps2) {
        Err(
            ref e @ Error::WrongSigningKey {
                ref origin,
                ref key_site,
            },
        ) => {
            assert_eq!((origin.as_str(), key_site.as_str()), ("CAS", "PS2"));
            one_line(e);
        }
        r => panic!("{r:?}"),
    }

    // An instruction breaking the kind rules cannot be signed.
    let mut bad_delta = instruction("CAS", "PS1", 3);
    bad_delta.kind = InstructionKind::Delta;
    assert!(matches!(
        bad_delta.sign(&p.cas),
        Err(Error::BadInstruction { .. })
    ));

    // Revoked origin.
    p.trust.revoke(code("CAS")).unwrap();
    let good = instruction("CAS", "PS1", 1).sign(&p.cas).unwrap();
    match good.verify(&p.trust, &ps1, None) {
        Err(ref e @ Error::RevokedKey { ref site, .. }) => {
            assert_eq!(site, "CAS");
            one_line(e);
        }
        r => panic!("{r:?}"),
    }
}

#[test]
fn every_single_byte_change_of_a_signed_instruction_is_refused() {
    let p = pair();
    let ps1 = code("PS1");
    let mut delta = instruction("CAS", "PS1", 4);
    delta.kind = InstructionKind::Delta;
    delta.base_version = Some(3);
    let wire = delta.sign(&p.cas).unwrap().encode();
    // The untouched bytes verify, so the refusals below come from the change.
    let ok = SignedInstruction::decode(&wire).unwrap();
    assert_eq!(ok.verify(&p.trust, &ps1, None).unwrap(), delta);

    let mut refused = 0usize;
    for i in 0..wire.len() {
        for mask in 1..=255u8 {
            let mut bytes = wire.clone();
            bytes[i] ^= mask;
            let r = SignedInstruction::decode(&bytes).and_then(|s| s.verify(&p.trust, &ps1, None));
            match r {
                Err(e) => {
                    one_line(&e);
                    refused += 1;
                }
                Ok(ins) => panic!("byte {i} ^ {mask:#04x} accepted: {ins:?}"),
            }
        }
    }
    assert_eq!(refused, wire.len() * 255);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
