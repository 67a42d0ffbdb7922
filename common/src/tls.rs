//! QUIC and HTTPS TLS configurations for master and agent.
//!
//! Every config is built with an explicit ring provider rather than a
//! process-wide default, so nothing here depends on who installed what.
//! The master presents its chain as [server cert, CA cert]: joining agents
//! only know the CA fingerprint from their token and find the CA in that
//! chain (see [`quic_join_client_config`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::connection_ids::connection_id_generator;
use crate::pki::cert_fingerprint_der;
use crate::wire::ALPN;

/// How quickly either side notices that the other is gone: the agent pings
/// every `keep_alive` (the master answers), and either side gives a
/// connection up after `idle_timeout` of silence.
/// The smaller idle timeout of the two peers applies, so an agent can ask
/// for faster detection than the master's default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuicTiming {
    pub keep_alive: Duration,
    pub idle_timeout: Duration,
}

impl QuicTiming {
    /// Pings four times per idle period, so one lost ping is not a death.
    pub fn with_idle_timeout(idle_timeout: Duration) -> QuicTiming {
        QuicTiming { keep_alive: (idle_timeout / 4).max(Duration::from_millis(250)), idle_timeout }
    }
}

impl Default for QuicTiming {
    /// A silent partition or a dead peer is noticed within 10 s.
    fn default() -> Self {
        QuicTiming::with_idle_timeout(Duration::from_secs(10))
    }
}
/// Control stream plus a few log/exec streams; more is a misbehaving peer.
const MAX_BIDI_STREAMS: u32 = 32;
const MAX_UNI_STREAMS: u32 = 8;

/// No minimum interval between stateless resets. quinn drops a reset due
/// within the interval of the last one, and it reads the clock once per
/// drain of the socket: under load, one reset per drain went out and every
/// other packet of a lost session in that drain got none. After a master
/// restart with 10,000 agents, 7-15 % of them missed their reset, backed
/// off their retransmissions and waited out their idle timeout. A reset is
/// smaller than the packet that caused it, so there is no amplification
/// and no reset loop to guard against; its cost is one HMAC, less than
/// reading the packet. The agents' jittered back-off spreads the
/// handshakes that follow.
const MIN_RESET_INTERVAL: Duration = Duration::ZERO;

/// Shortest reset key the master accepts.
pub const MIN_RESET_KEY_BYTES: usize = 32;

/// The master's QUIC endpoint. Reset tokens are derived from `reset_key`,
/// which outlives the process (the data dir keeps it): after a restart the
/// master answers a packet of a session it no longer knows with a stateless
/// reset the agent trusts, so the agent reconnects at its next ping instead
/// of waiting out its idle timeout.
pub fn quic_endpoint_config(reset_key: &[u8]) -> Result<quinn::EndpointConfig, TlsError> {
    if reset_key.len() < MIN_RESET_KEY_BYTES {
        return Err(TlsError::Quic(format!("the QUIC reset key has {} bytes, at least {MIN_RESET_KEY_BYTES} needed", reset_key.len())));
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset_key);
    let cid_key = connection_id_key(&key);
    let mut config = quinn::EndpointConfig::new(Arc::new(key));
    config.min_reset_interval(MIN_RESET_INTERVAL);
    config.cid_generator(move || connection_id_generator(cid_key.clone()));
    Ok(config)
}

/// Connection IDs carry a signature the endpoint verifies before anything
/// else; its key must outlive the process too, or the old sessions'
/// packets are dropped unanswered instead of reset.
fn connection_id_key(reset_key: &ring::hmac::Key) -> ring::hmac::Key {
    let derived = ring::hmac::sign(reset_key, b"fogmesh quic connection ids");
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derived.as_ref())
}

/// Why a TLS or QUIC configuration could not be built.
#[derive(Debug)]
pub enum TlsError {
    /// PEM input that does not hold what it should.
    Pem(String),
    /// A pinned fingerprint that is not 64 lowercase hex characters.
    InvalidFingerprint(String),
    /// rustls refused the certificates, key or versions.
    Rustls(rustls::Error),
    /// The certificate verifier could not be built.
    Verifier(rustls::server::VerifierBuilderError),
    /// The provider lacks the cipher suite QUIC needs for its first packets.
    Quic(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Pem(why) => write!(f, "bad PEM: {why}"),
            TlsError::InvalidFingerprint(why) => write!(f, "invalid CA fingerprint: {why}"),
            TlsError::Rustls(e) => write!(f, "TLS configuration error: {e}"),
            TlsError::Verifier(e) => write!(f, "cannot build certificate verifier: {e}"),
            TlsError::Quic(why) => write!(f, "QUIC configuration error: {why}"),
        }
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsError::Rustls(e) => Some(e),
            TlsError::Verifier(e) => Some(e),
            _ => None,
        }
    }
}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> Self {
        TlsError::Rustls(e)
    }
}

impl From<rustls::server::VerifierBuilderError> for TlsError {
    fn from(e: rustls::server::VerifierBuilderError) -> Self {
        TlsError::Verifier(e)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// QUIC server config of the master.
///
/// Client certificates are optional so a new agent can connect with only a
/// join token; when one is presented it must chain to the cluster CA. The
/// master must refuse everything but `Join` on a connection without one.
pub fn quic_server_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    timing: &QuicTiming,
) -> Result<quinn::ServerConfig, TlsError> {
    let provider = provider();
    let roots = Arc::new(root_store(ca_pem)?);
    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .allow_unauthenticated()
        .build()?;
    let client_verifier = Arc::new(RenewableClientCerts { inner: client_verifier });
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(server_chain(ca_pem, cert_pem)?, private_key(key_pem)?)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = transport(timing)?;
    // Agents ping (they are the ones behind NATs); the master's acks answer
    // them. Pings from the master too would double the idle traffic of a
    // fleet without noticing a dead agent any sooner.
    transport.keep_alive_interval(None);
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// How long after its expiry a node certificate still opens the QUIC door,
/// for renewal only: a fog box that was off for months still comes back
/// without a new token (revocation still wins).
pub const RENEWAL_GRACE: Duration = Duration::from_secs(365 * 24 * 3600);

/// The master's client-certificate check: the CA's, except that a node
/// certificate expired less than [`RENEWAL_GRACE`] ago passes the handshake.
/// The master then lets such a connection do one thing: renew (it checks
/// expiry itself before it opens a session).
#[derive(Debug)]
struct RenewableClientCerts {
    inner: Arc<dyn rustls::server::danger::ClientCertVerifier>,
}

impl rustls::server::danger::ClientCertVerifier for RenewableClientCerts {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        use rustls::CertificateError::{Expired, ExpiredContext};
        match self.inner.verify_client_cert(end_entity, intermediates, now) {
            Err(rustls::Error::InvalidCertificate(Expired | ExpiredContext { .. })) => {
                let not_after = crate::pki::cert_validity_der(end_entity.as_ref())
                    .map_err(|_| rustls::Error::InvalidCertificate(Expired))?
                    .1
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                if now.as_secs().saturating_sub(not_after.as_secs()) > RENEWAL_GRACE.as_secs() {
                    return Err(rustls::Error::InvalidCertificate(Expired));
                }
                // Everything else is checked as of the last second it was valid.
                let then = UnixTime::since_unix_epoch(not_after.saturating_sub(Duration::from_secs(1)));
                self.inner.verify_client_cert(end_entity, intermediates, then)
            }
            other => other,
        }
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// QUIC client config for the join step: no client certificate, and the
/// server is trusted only if its chain holds the CA pinned by the token.
pub fn quic_join_client_config(ca_fingerprint: &str) -> Result<quinn::ClientConfig, TlsError> {
    let fingerprint = ca_fingerprint.trim();
    if fingerprint.len() != 64
        || !fingerprint
            .bytes()
            .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(TlsError::InvalidFingerprint(
            "expected 64 lowercase hex characters (SHA-256)".into(),
        ));
    }
    let provider = provider();
    let verifier = Arc::new(PinnedCaVerifier {
        fingerprint: fingerprint.to_owned(),
        provider: provider.clone(),
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    quic_client(tls, &QuicTiming::default())
}

/// QUIC client config of a joined node: mutual TLS with its node
/// certificate, trusting only the cluster CA.
pub fn quic_node_client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    timing: &QuicTiming,
) -> Result<quinn::ClientConfig, TlsError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(root_store(ca_pem)?)
        .with_client_auth_cert(certs(cert_pem)?, private_key(key_pem)?)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    quic_client(tls, timing)
}

/// TLS client config for MQTT: trusts only the cluster CA and presents the
/// given certificate (a node's, or the master's ingest identity).
pub fn mqtt_client_config(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(root_store(ca_pem)?)
        .with_client_auth_cert(certs(cert_pem)?, private_key(key_pem)?)?;
    Ok(Arc::new(tls))
}

/// TLS server config of the master's MQTT door: a client certificate under
/// the cluster CA is required (which node it is, and whether it is still
/// current, the door checks after the handshake).
pub fn mqtt_server_config(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let client_verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(root_store(ca_pem)?), provider.clone()).build()?;
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(server_chain(ca_pem, cert_pem)?, private_key(key_pem)?)?;
    Ok(Arc::new(tls))
}

/// TLS config of the master's REST API: server auth only (clients present
/// an API token instead), HTTP/1.1.
pub fn https_server_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(server_chain(ca_pem, cert_pem)?, private_key(key_pem)?)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

/// Roots for CLI and agent HTTPS clients: the cluster CA and nothing else.
pub fn https_client_roots(ca_pem: &str) -> Result<RootCertStore, TlsError> {
    root_store(ca_pem)
}

/// DER of the certificate the peer presented (its first), if any. On the
/// master this is the node certificate, already verified against the CA.
pub fn peer_certificate_der(conn: &quinn::Connection) -> Option<Vec<u8>> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().map(|c| c.as_ref().to_vec())
}

fn transport(timing: &QuicTiming) -> Result<quinn::TransportConfig, TlsError> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(timing.keep_alive));
    t.max_idle_timeout(Some(
        timing
            .idle_timeout
            .try_into()
            .map_err(|e: quinn::VarIntBoundsExceeded| TlsError::Quic(e.to_string()))?,
    ));
    t.max_concurrent_bidi_streams(MAX_BIDI_STREAMS.into());
    t.max_concurrent_uni_streams(MAX_UNI_STREAMS.into());
    Ok(t)
}

fn quic_client(tls: rustls::ClientConfig, timing: &QuicTiming) -> Result<quinn::ClientConfig, TlsError> {
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport(timing)?));
    Ok(config)
}

fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let mut reader = pem.as_bytes();
    let certs = rustls_pemfile::certs(&mut reader)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Pem("no CERTIFICATE block found".into()));
    }
    Ok(certs)
}

fn private_key(pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let mut reader = pem.as_bytes();
    rustls_pemfile::private_key(&mut reader)
        .map_err(|e| TlsError::Pem(e.to_string()))?
        .ok_or_else(|| TlsError::Pem("no PRIVATE KEY block found".into()))
}

fn root_store(ca_pem: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(ca_pem)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// [server cert (+ whatever the PEM holds), CA cert], without repeating the
/// CA if the server PEM already carries it.
fn server_chain(ca_pem: &str, cert_pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let mut chain = certs(cert_pem)?;
    for ca in certs(ca_pem)? {
        if !chain.contains(&ca) {
            chain.push(ca);
        }
    }
    Ok(chain)
}

/// Trusts a server whose chain contains the pinned CA and whose end-entity
/// certificate verifies against that CA for the dialled name.
///
/// The pin alone is not enough: anyone can copy the CA certificate into
/// their chain, so the end-entity must also be signed by it.
#[derive(Debug)]
struct PinnedCaVerifier {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|c| cert_fingerprint_der(c) == self.fingerprint)
        else {
            tracing::warn!(
                pinned = %self.fingerprint,
                "master's chain does not contain the CA pinned by the join token"
            );
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::ClusterCa;

    #[test]
    fn configs_build() {
        let ca = ClusterCa::generate("t").expect("ca");
        let (cert, key) = ca.issue_server_cert(&[]).expect("server cert");
        quic_server_config(ca.cert_pem(), &cert, &key, &QuicTiming::default()).expect("quic server");
        https_server_config(ca.cert_pem(), &cert, &key).expect("https server");
        quic_join_client_config(&ca.fingerprint()).expect("join client");
        https_client_roots(ca.cert_pem()).expect("roots");
        let chain = server_chain(ca.cert_pem(), &cert).expect("chain");
        assert_eq!(chain.len(), 2);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let ca = ClusterCa::generate("t").expect("ca");
        let (cert, key) = ca.issue_server_cert(&[]).expect("server cert");
        assert!(matches!(
            quic_join_client_config("abc"),
            Err(TlsError::InvalidFingerprint(_))
        ));
        assert!(matches!(
            quic_server_config("", &cert, &key, &QuicTiming::default()),
            Err(TlsError::Pem(_))
        ));
        assert!(matches!(
            quic_server_config(ca.cert_pem(), &cert, "", &QuicTiming::default()),
            Err(TlsError::Pem(_))
        ));
        assert!(quic_node_client_config(ca.cert_pem(), "junk", &key, &QuicTiming::default()).is_err());
        assert!(matches!(quic_endpoint_config(b"too short"), Err(TlsError::Quic(m)) if m.contains("9 bytes")));
    }

    /// A burst of packets of lost sessions, all waiting in the socket when
    /// the endpoint starts (a restarted master, its agents' heartbeats):
    /// each gets its reset. With any minimum interval quinn answered one
    /// per drain of the socket.
    #[tokio::test]
    async fn every_packet_of_a_lost_session_gets_its_reset() {
        let reset_key = [7u8; MIN_RESET_KEY_BYTES];
        let server = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let agents = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        agents.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
        let hmac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &reset_key);
        let mut ids = connection_id_generator(connection_id_key(&hmac));
        let burst = 64;
        for _ in 0..burst {
            // A short-header packet of a session the endpoint never had.
            let mut packet = vec![0x40];
            packet.extend_from_slice(&ids.generate_cid());
            packet.extend_from_slice(&[0x5a; 40]);
            agents.send_to(&packet, server.local_addr().expect("addr")).expect("send");
        }
        let endpoint = quinn::Endpoint::new(quic_endpoint_config(&reset_key).expect("config"), None, server, Arc::new(quinn::TokioRuntime))
            .expect("endpoint");
        let resets = tokio::task::spawn_blocking(move || {
            let mut buf = [0u8; 128];
            (0..burst).take_while(|_| agents.recv_from(&mut buf).is_ok()).count()
        })
        .await
        .expect("receiver");
        assert_eq!(resets, burst, "packets of lost sessions left without a reset");
        drop(endpoint);
    }
}
