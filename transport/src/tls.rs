//! TLS for QUIC between sites: certificates bound to site keys, pinned against the trust store.
//!
//! There is no certificate authority. Each site's certificate is self-signed by its Ed25519
//! site key (the same key that signs instructions) and names the site in its subject
//! alternative name as `<code>.site.freight` (lower case). A peer's certificate is accepted
//! only when all of these hold:
//! - it parses, its key is Ed25519, and it names exactly one site;
//! - it is signed by its own key (the certificate is bound to the key it carries);
//! - the trust store holds exactly that key, unrevoked, for the site it names
//!   ([`TrustStore::authenticate`]);
//! - on the connecting side, the site is the one the caller meant to reach.
//!
//! The TLS 1.3 handshake then proves that the peer holds the key's secret half. Both sides
//! authenticate: a server refuses clients without a certificate. Validity dates are not
//! checked: trust is the pinned key, and revoking it in the trust store ends it.
//! Every refusal names the site and the presented key's fingerprint.

use crate::error::{Error, Result};
use crate::trust::TrustView;
use freight_core::site::fingerprint_of;
use freight_core::{PublicIdentity, SiteCode, SiteKey};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::path::Path;
use std::sync::Arc;

/// ALPN protocol name of Freight's transfer protocol over QUIC.
pub const ALPN: &[u8] = b"freight/1";
const SAN_SUFFIX: &str = ".site.freight";

/// The DNS name a site's certificate carries, e.g. `ps1.site.freight`.
pub fn site_dns_name(code: SiteCode) -> String {
    format!("{}{SAN_SUFFIX}", code.as_str().to_ascii_lowercase())
}

/// Makes the certificate of `key`'s site: self-signed by the site key, naming the site.
pub fn site_certificate(key: &SiteKey) -> Result<CertificateDer<'static>> {
    let code = key.code();
    let fail =
        |e: rcgen::Error| Error::Tls(format!("cannot make the certificate of site {code}: {e}"));
    let pkcs8 = key.pkcs8_der();
    let der = PrivatePkcs8KeyDer::from(pkcs8.as_slice());
    let pair =
        rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ED25519).map_err(fail)?;
    let mut params = rcgen::CertificateParams::new(vec![site_dns_name(code)]).map_err(fail)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("Freight site {code}"));
    // Trust is the pinned key, not the dates: make them wide so clocks never matter.
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(9999, 12, 31);
    Ok(params.self_signed(&pair).map_err(fail)?.der().clone())
}

/// The site and key a certificate names, checked to be self-signed by that key; nothing is
/// looked up in a trust store.
pub fn certificate_identity(der: &[u8]) -> Result<PublicIdentity> {
    let refuse = |reason: String| Error::PeerRefused(reason);
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| {
        refuse(format!(
            "peer certificate does not parse ({e}); the peer is not a Freight site"
        ))
    })?;
    let spki = cert.public_key();
    let key: [u8; 32] = match (
        spki.algorithm.algorithm == x509_parser::oid_registry::OID_SIG_ED25519,
        <[u8; 32]>::try_from(spki.subject_public_key.data.as_ref()),
    ) {
        (true, Ok(k)) => k,
        _ => {
            return Err(refuse(
                "peer certificate does not carry an Ed25519 site key; the peer is not a Freight site".into(),
            ));
        }
    };
    let fp = fingerprint_of(&key);
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_string());
            }
        }
    }
    let code = match names.as_slice() {
        [one] => one
            .strip_suffix(SAN_SUFFIX)
            .and_then(|c| SiteCode::parse(&c.to_ascii_uppercase()).ok())
            .filter(|c| site_dns_name(*c) == *one),
        _ => None,
    };
    let Some(code) = code else {
        return Err(refuse(format!(
            "peer certificate with key {fp} does not name exactly one site (names: {names:?}); the peer is not a Freight site"
        )));
    };
    let id = PublicIdentity { code, key };
    let signed_by_own_key = cert.signature_algorithm.algorithm
        == x509_parser::oid_registry::OID_SIG_ED25519
        && <[u8; 64]>::try_from(cert.signature_value.data.as_ref())
            .is_ok_and(|sig| id.verify(cert.tbs_certificate.as_ref(), &sig));
    if !signed_by_own_key {
        return Err(refuse(format!(
            "peer certificate for site {code} with key {fp} is not signed by that key: it is not bound to the site key; refusing it"
        )));
    }
    Ok(id)
}

/// Checks a peer's certificate against the trust store (see the module documentation).
pub fn authenticate(
    der: &[u8],
    trust: &TrustView,
    expected: Option<SiteCode>,
) -> Result<PublicIdentity> {
    let id = certificate_identity(der)?;
    if let Some(want) = expected
        && want != id.code
    {
        return Err(Error::PeerRefused(format!(
            "peer is site {} (key {}), not site {want} as expected; check the address of {want}",
            id.code,
            id.fingerprint()
        )));
    }
    trust.authenticate(id.code, &id.key).map_err(|e| {
        Error::PeerRefused(format!(
            "peer site {} with key {}: {e}",
            id.code,
            id.fingerprint()
        ))
    })
}

/// One site's TLS material: its certificate and key, and where its trust store is.
pub struct SiteTls {
    code: SiteCode,
    /// This site's public identity (its code and the public half of its key).
    identity: PublicIdentity,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    trust: Arc<TrustView>,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for SiteTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteTls")
            .field("site", &self.code)
            .field("trust", &self.trust.dir())
            .finish_non_exhaustive()
    }
}

impl SiteTls {
    /// TLS for the site of `key`, trusting the sites in the trust store at `trust_dir`.
    pub fn new(key: &SiteKey, trust_dir: &Path) -> Result<SiteTls> {
        Self::with_certificate(key, site_certificate(key)?, trust_dir)
    }

    /// Like [`new`](Self::new) but presenting `cert` instead of the site's own certificate.
    /// Peers check it like any other, so a certificate that is not bound to `key`'s site is
    /// refused at their end; tests use this to present forged certificates.
    pub fn with_certificate(
        key: &SiteKey,
        cert: CertificateDer<'static>,
        trust_dir: &Path,
    ) -> Result<SiteTls> {
        Ok(SiteTls {
            code: key.code(),
            identity: key.identity(),
            cert,
            key: PrivateKeyDer::Pkcs8(key.pkcs8_der().to_vec().into()),
            trust: TrustView::load(trust_dir)?,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        })
    }

    /// This site's code.
    pub fn code(&self) -> SiteCode {
        self.code
    }

    /// The trust store, in memory.
    pub fn trust(&self) -> &Arc<TrustView> {
        &self.trust
    }

    /// This site's public identity.
    pub fn identity(&self) -> PublicIdentity {
        self.identity
    }

    fn verifier(&self, expected: Option<SiteCode>) -> Arc<PinnedVerifier> {
        Arc::new(PinnedVerifier {
            trust: self.trust.clone(),
            expected,
            algorithms: self.provider.signature_verification_algorithms,
        })
    }

    /// Server side: requires a client certificate of any trusted site.
    pub fn server_config(&self) -> Result<rustls::ServerConfig> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_client_cert_verifier(self.verifier(None))
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())
            .map_err(tls_err)?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(cfg)
    }

    /// Client side: accepts only the server of site `peer`.
    pub fn client_config(&self, peer: SiteCode) -> Result<rustls::ClientConfig> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .dangerous()
            .with_custom_certificate_verifier(self.verifier(Some(peer)))
            .with_client_auth_cert(vec![self.cert.clone()], self.key.clone_key())
            .map_err(tls_err)?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(cfg)
    }
}

fn tls_err(e: rustls::Error) -> Error {
    Error::Tls(format!("cannot set up TLS: {e}"))
}

/// rustls verifier for both directions: the checks of [`authenticate`], then the handshake
/// signature with the certificate's key (Ed25519 only).
#[derive(Debug)]
struct PinnedVerifier {
    trust: Arc<TrustView>,
    expected: Option<SiteCode>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedVerifier {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> std::result::Result<(), rustls::Error> {
        let res = if intermediates.is_empty() {
            authenticate(end_entity, &self.trust, self.expected).map(|_| ())
        } else {
            Err(Error::PeerRefused(
                "peer sent a certificate chain; Freight sites present one self-signed certificate"
                    .into(),
            ))
        };
        res.map_err(|e| {
            tracing::debug!(error = %e, "refused peer at the TLS handshake");
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(e),
            )))
        })
    }

    fn signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl ClientCertVerifier for PinnedVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}
