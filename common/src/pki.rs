//! Cluster CA, certificates and join tokens.
//!
//! The master makes a CA at `init`, issues its own server certificate from
//! it, and signs one client certificate per node from the CSR an agent sends
//! with its join token. The CA, not the agent, decides the name in a node
//! certificate: an agent may only speak for itself. Join tokens carry the
//! CA fingerprint so a joining agent can pin the master before it trusts it.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SanType, SerialNumber,
};
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::CertificateDer;

/// Prefix and version of the join token format.
const TOKEN_PREFIX: &str = "fmj1";
const TOKEN_ID_BYTES: usize = 8;
const TOKEN_SECRET_BYTES: usize = 16;
/// Longer inputs are refused before they are looked at.
const MAX_TOKEN_CHARS: usize = 256;
/// A CSR is a few hundred bytes; anything much bigger is not ours.
const MAX_CSR_BYTES: usize = 16 * 1024;
const MAX_PEM_BYTES: usize = 64 * 1024;
const MAX_NAME_CHARS: usize = 253;
const MAX_VALID_DAYS: u32 = 3650;

const CA_VALID_DAYS: u64 = 3650;
const SERVER_VALID_DAYS: u64 = 365;
/// Certificates start a day in the past: fog boxes often have a lagging
/// clock, and a certificate "not yet valid" there would lock them out.
const BACKDATE: Duration = Duration::from_secs(24 * 3600);
const DAY: Duration = Duration::from_secs(24 * 3600);
/// The shortest node certificate lifetime (tests run renewals in seconds).
pub const MIN_NODE_CERT_LIFETIME: Duration = Duration::from_secs(30);
/// A CRL's promised next update: brokers refuse everyone once it passes,
/// so the master writes a new one long before (at least daily).
const CRL_VALID: Duration = Duration::from_secs(30 * 24 * 3600);

/// Name the master's server certificate always carries, so agents can dial
/// it by this name regardless of how the master is reached.
pub const MASTER_SERVER_NAME: &str = "fogmesh-master";

/// Why a certificate, key, CSR or token operation failed.
#[derive(Debug)]
pub enum PkiError {
    /// rcgen could not generate, parse or sign.
    Rcgen(rcgen::Error),
    /// PEM input that does not hold what it should.
    Pem(String),
    /// The CA key does not belong to the CA certificate.
    KeyMismatch,
    /// A CSR that does not parse or whose signature is invalid.
    InvalidCsr(String),
    /// A node or host name that cannot go into a certificate.
    InvalidName(String),
    /// Validity outside the allowed range.
    InvalidValidity(String),
    /// A join token that is malformed; the message names the bad part.
    InvalidToken(String),
    /// The system random number generator failed.
    Random,
}

impl fmt::Display for PkiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PkiError::Rcgen(e) => write!(f, "certificate error: {e}"),
            PkiError::Pem(why) => write!(f, "bad PEM: {why}"),
            PkiError::KeyMismatch => {
                f.write_str("the CA key does not match the CA certificate's public key")
            }
            PkiError::InvalidCsr(why) => write!(f, "invalid certificate signing request: {why}"),
            PkiError::InvalidName(why) => write!(f, "invalid name: {why}"),
            PkiError::InvalidValidity(why) => write!(f, "invalid validity: {why}"),
            PkiError::InvalidToken(why) => write!(f, "invalid join token: {why}"),
            PkiError::Random => f.write_str("the system random number generator failed"),
        }
    }
}

impl std::error::Error for PkiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PkiError::Rcgen(e) => Some(e),
            _ => None,
        }
    }
}

impl From<rcgen::Error> for PkiError {
    fn from(e: rcgen::Error) -> Self {
        PkiError::Rcgen(e)
    }
}

/// The cluster certificate authority: its PEMs plus the parsed issuer that
/// rcgen signs with.
pub struct ClusterCa {
    cert_pem: String,
    key_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for ClusterCa {
    /// Never prints the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// Makes a new CA (ECDSA P-256, ~10 years) named after the cluster.
    pub fn generate(cluster_name: &str) -> Result<Self, PkiError> {
        let cluster_name = cluster_name.trim();
        if cluster_name.is_empty() || cluster_name.len() > 64 {
            return Err(PkiError::InvalidName(
                "cluster name must be 1 to 64 characters".into(),
            ));
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "fogmesh");
        dn.push(DnType::CommonName, format!("fogmesh CA {cluster_name}"));
        params.distinguished_name = dn;
        // Path length 0: the CA signs leaf certificates only.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_VALID_DAYS)?;
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        tracing::info!(cluster = cluster_name, "generated cluster CA");
        Ok(ClusterCa {
            cert_pem,
            key_pem,
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA saved with [`cert_pem`](Self::cert_pem) and
    /// [`key_pem`](Self::key_pem). Checks that the key belongs to the
    /// certificate, so a mixed-up pair fails here rather than at every
    /// handshake later.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        if cert_pem.len() > MAX_PEM_BYTES || key_pem.len() > MAX_PEM_BYTES {
            return Err(PkiError::Pem("CA PEM is too large".into()));
        }
        let cert_der = first_cert_der(cert_pem)?;
        let key = KeyPair::from_pem(key_pem)?;
        let spki = x509::subject_public_key_info(&cert_der)
            .ok_or_else(|| PkiError::Pem("cannot read the CA certificate".into()))?;
        if spki != key.subject_public_key_info() {
            return Err(PkiError::KeyMismatch);
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(ClusterCa {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            cert_der,
            issuer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key; store it readable by the master only.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Lowercase hex SHA-256 of the CA certificate DER: what join tokens pin.
    pub fn fingerprint(&self) -> String {
        cert_fingerprint_der(&self.cert_der)
    }

    /// Issues the master's server certificate (~1 year). Names that parse
    /// as IP addresses become IP SANs, others DNS SANs; "localhost",
    /// 127.0.0.1 and "fogmesh-master" are always included. It carries both
    /// server and client auth so the master can also dial out with it.
    pub fn issue_server_cert(&self, names: &[String]) -> Result<(String, String), PkiError> {
        let mut sans: Vec<SanType> = Vec::new();
        let defaults = ["localhost", "127.0.0.1", MASTER_SERVER_NAME];
        for name in names
            .iter()
            .map(|n| n.trim())
            .chain(defaults.iter().copied())
        {
            let san = san_for(name)?;
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "fogmesh");
        dn.push(DnType::CommonName, MASTER_SERVER_NAME);
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, SERVER_VALID_DAYS)?;
        params.serial_number = Some(random_serial()?);
        let cert = params.signed_by(&key, &self.issuer)?;
        tracing::info!(names = ?names, "issued master server certificate");
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A certificate revocation list of `revoked` (serial, when), signed by
    /// the CA, for brokers outside the master (mosquitto's `crlfile`).
    /// `number` must grow from one list to the next.
    pub fn crl_pem(&self, revoked: &[(Vec<u8>, SystemTime)], number: u64) -> Result<String, PkiError> {
        let now = SystemTime::now();
        let params = CertificateRevocationListParams {
            this_update: now.checked_sub(BACKDATE).unwrap_or(now).into(),
            next_update: (now + CRL_VALID).into(),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|(serial, when)| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: (*when).into(),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }

    /// Signs a node's CSR into a client certificate valid for `valid_days`.
    ///
    /// Only the public key is taken from the CSR (after checking its
    /// signature): the CN and the single SAN are `node_name`, whatever the
    /// CSR asked for, so a node cannot obtain a certificate for another.
    /// A `node_name` that is an IP address becomes an IP SAN.
    pub fn sign_node_csr(
        &self,
        csr_pem: &str,
        node_name: &str,
        valid_days: u32,
    ) -> Result<String, PkiError> {
        if valid_days == 0 || valid_days > MAX_VALID_DAYS {
            return Err(PkiError::InvalidValidity(format!(
                "{valid_days} days is outside 1..={MAX_VALID_DAYS}"
            )));
        }
        self.sign_node_csr_for(csr_pem, node_name, DAY * valid_days)
    }

    /// [`ClusterCa::sign_node_csr`] with a lifetime of `lifetime` from now
    /// (at least [`MIN_NODE_CERT_LIFETIME`]); agents renew at two thirds of it.
    pub fn sign_node_csr_for(&self, csr_pem: &str, node_name: &str, lifetime: Duration) -> Result<String, PkiError> {
        validate_node_name(node_name)?;
        if lifetime < MIN_NODE_CERT_LIFETIME || lifetime > DAY * MAX_VALID_DAYS {
            return Err(PkiError::InvalidValidity(format!(
                "a lifetime of {} s is outside {} s ..= {MAX_VALID_DAYS} days",
                lifetime.as_secs(),
                MIN_NODE_CERT_LIFETIME.as_secs()
            )));
        }
        if csr_pem.len() > MAX_CSR_BYTES {
            return Err(PkiError::InvalidCsr(format!(
                "{} bytes exceeds the {MAX_CSR_BYTES} byte limit",
                csr_pem.len()
            )));
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::InvalidCsr(e.to_string()))?;

        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "fogmesh");
        dn.push(DnType::CommonName, node_name);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![san_for(node_name)?];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        set_validity_for(&mut params, lifetime)?;
        params.serial_number = Some(random_serial()?);
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        tracing::info!(node = node_name, lifetime_s = lifetime.as_secs(), "signed node certificate");
        Ok(cert.pem())
    }
}

/// Agent side of joining: a fresh P-256 key and a CSR naming the node.
/// Returns `(key_pem, csr_pem)`; the key never leaves the node.
pub fn node_key_and_csr(node_name: &str) -> Result<(String, String), PkiError> {
    validate_node_name(node_name)?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node_name);
    params.distinguished_name = dn;
    params.subject_alt_names = vec![san_for(node_name)?];
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// The serial number of the first certificate in a PEM text (what a CRL names).
pub fn cert_serial_pem(pem: &str) -> Result<Vec<u8>, PkiError> {
    x509::serial(&first_cert_der(pem)?).ok_or_else(|| PkiError::Pem("the certificate does not parse".into()))
}

/// Lowercase hex SHA-256 of a certificate's DER.
pub fn cert_fingerprint_der(der: &[u8]) -> String {
    sha256_hex(der)
}

/// [`cert_fingerprint_der`] of the first certificate in a PEM text.
pub fn cert_fingerprint_pem(pem: &str) -> Result<String, PkiError> {
    Ok(cert_fingerprint_der(&first_cert_der(pem)?))
}

/// The node name (subject CN) of a client certificate, or `None` when the
/// certificate has no CN, more than one, or does not parse.
///
/// Only meaningful after the TLS layer verified the certificate against the
/// cluster CA; it is the identity the CA wrote into it.
pub fn node_name_from_cert(der: &[u8]) -> Option<String> {
    let name = x509::subject_common_name(der)?;
    validate_node_name(&name).ok()?;
    Some(name)
}

/// Checks that a node name can serve as CN and SAN and is safe to use in
/// MQTT topics and file names: 1 to 253 characters of ASCII letters,
/// digits, '-', '_' and '.', or an IP address.
pub fn validate_node_name(name: &str) -> Result<(), PkiError> {
    if name.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    // An external broker knows the master's ingest by this certificate name.
    if name.eq_ignore_ascii_case(MASTER_SERVER_NAME) {
        return Err(PkiError::InvalidName(format!("node name {name:?} is the master's own certificate name")));
    }
    if name.is_empty() || name.len() > MAX_NAME_CHARS {
        return Err(PkiError::InvalidName(format!(
            "node name must be 1 to {MAX_NAME_CHARS} characters"
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(PkiError::InvalidName(format!(
            "node name {name:?} contains {c:?}; use letters, digits, '-', '_' and '.'"
        )));
    }
    if name.starts_with(['.', '-']) || name.ends_with(['.', '-']) {
        return Err(PkiError::InvalidName(format!(
            "node name {name:?} must start and end with a letter or digit"
        )));
    }
    Ok(())
}

/// A join token: `fmj1.<id>.<secret>.<ca_fingerprint>`.
///
/// The id finds the token record, the secret proves possession (the master
/// stores only [`hash_secret`] of it), and the fingerprint lets the agent
/// pin the cluster CA before it sends anything.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub id: String,
    pub secret: String,
    pub ca_fingerprint: String,
}

impl fmt::Debug for JoinToken {
    /// Keeps the secret out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("id", &self.id)
            .field("secret", &"[redacted]")
            .field("ca_fingerprint", &self.ca_fingerprint)
            .finish()
    }
}

impl JoinToken {
    /// A fresh token for the CA with this fingerprint.
    pub fn generate(ca_fingerprint: &str) -> Result<Self, PkiError> {
        check_hex("CA fingerprint", ca_fingerprint, 32)?;
        Ok(JoinToken {
            id: try_random_hex(TOKEN_ID_BYTES)?,
            secret: try_random_hex(TOKEN_SECRET_BYTES)?,
            ca_fingerprint: ca_fingerprint.to_owned(),
        })
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX}.{}.{}.{}",
            self.id, self.secret, self.ca_fingerprint
        )
    }
}

impl FromStr for JoinToken {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Tolerate the whitespace a copy-paste brings along, nothing else.
        let s = s.trim();
        if s.len() > MAX_TOKEN_CHARS {
            return Err(PkiError::InvalidToken(format!(
                "{} characters is longer than any token",
                s.len()
            )));
        }
        let parts: Vec<&str> = s.split('.').collect();
        if parts.first() != Some(&TOKEN_PREFIX) {
            return Err(PkiError::InvalidToken(format!(
                "it must start with \"{TOKEN_PREFIX}.\""
            )));
        }
        if parts.len() != 4 {
            return Err(PkiError::InvalidToken(format!(
                "expected 4 parts separated by '.' (fmj1.<id>.<secret>.<ca fingerprint>), found {}",
                parts.len()
            )));
        }
        check_hex("id", parts[1], TOKEN_ID_BYTES).map_err(token_err)?;
        check_hex("secret", parts[2], TOKEN_SECRET_BYTES).map_err(token_err)?;
        check_hex("CA fingerprint", parts[3], 32).map_err(token_err)?;
        Ok(JoinToken {
            id: parts[1].to_owned(),
            secret: parts[2].to_owned(),
            ca_fingerprint: parts[3].to_owned(),
        })
    }
}

fn token_err(e: PkiError) -> PkiError {
    match e {
        PkiError::InvalidName(why) => PkiError::InvalidToken(why),
        other => other,
    }
}

/// Hex SHA-256 of a token secret: what the master stores instead of it.
pub fn hash_secret(secret: &str) -> String {
    sha256_hex(secret.as_bytes())
}

/// Lowercase hex SHA-256 of any bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, bytes).as_ref())
}

/// `bytes` random bytes from the OS generator as lowercase hex, for admin
/// API tokens and the like.
///
/// # Panics
/// If the OS random number generator fails, which leaves nothing safe to
/// do; use [`try_random_hex`] to handle that case.
pub fn random_hex(bytes: usize) -> String {
    match try_random_hex(bytes) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

/// Like [`random_hex`] but reports a generator failure.
pub fn try_random_hex(bytes: usize) -> Result<String, PkiError> {
    let mut buf = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| PkiError::Random)?;
    Ok(hex(&buf))
}

/// Compares secrets without leaking where they differ, or their lengths:
/// both sides are hashed first and the digests compared in full.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let da = digest::digest(&digest::SHA256, a.as_bytes());
    let db = digest::digest(&digest::SHA256, b.as_bytes());
    let diff = da
        .as_ref()
        .iter()
        .zip(db.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    s
}

/// `value` must be exactly `bytes` bytes of lowercase hex.
fn check_hex(what: &str, value: &str, bytes: usize) -> Result<(), PkiError> {
    if value.len() != bytes * 2 {
        return Err(PkiError::InvalidName(format!(
            "the {what} must be {} hex characters, found {}",
            bytes * 2,
            value.len()
        )));
    }
    if !value
        .bytes()
        .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(PkiError::InvalidName(format!(
            "the {what} must be lowercase hex"
        )));
    }
    Ok(())
}

fn san_for(name: &str) -> Result<SanType, PkiError> {
    if name.is_empty() {
        return Err(PkiError::InvalidName("empty name".into()));
    }
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let ia5 = name
        .to_owned()
        .try_into()
        .map_err(|_| PkiError::InvalidName(format!("{name:?} is not an ASCII host name")))?;
    Ok(SanType::DnsName(ia5))
}

fn set_validity(params: &mut CertificateParams, days: u64) -> Result<(), PkiError> {
    let lifetime = DAY
        .checked_mul(u32::try_from(days).unwrap_or(u32::MAX))
        .ok_or_else(|| PkiError::InvalidValidity(format!("{days} days overflows")))?;
    set_validity_for(params, lifetime)
}

/// Valid from [`BACKDATE`] ago (clocks disagree) until `lifetime` from now.
fn set_validity_for(params: &mut CertificateParams, lifetime: Duration) -> Result<(), PkiError> {
    let now = SystemTime::now();
    let not_before = now
        .checked_sub(BACKDATE)
        .ok_or_else(|| PkiError::InvalidValidity("system clock is before 1970".into()))?;
    let not_after = now
        .checked_add(lifetime)
        .ok_or_else(|| PkiError::InvalidValidity(format!("a lifetime of {} s overflows", lifetime.as_secs())))?;
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    Ok(())
}

/// The validity of the first certificate in a PEM text: (issued, not after).
/// Issued is its not-before plus the [`BACKDATE`] every fogmesh certificate has.
pub fn cert_validity(cert_pem: &str) -> Result<(SystemTime, SystemTime), PkiError> {
    cert_validity_der(&first_cert_der(cert_pem)?)
}

/// [`cert_validity`] of a DER certificate.
pub fn cert_validity_der(der: &[u8]) -> Result<(SystemTime, SystemTime), PkiError> {
    let (not_before, not_after) = x509::validity(der).ok_or_else(|| PkiError::Pem("the certificate does not parse".into()))?;
    let at = |secs: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    Ok((at(not_before) + BACKDATE, at(not_after)))
}

/// When a node renews its certificate: two thirds into its life, so a
/// node that misses the moment (offline, master away) has a third left.
pub fn renewal_due(cert_pem: &str) -> Result<SystemTime, PkiError> {
    let (issued, not_after) = cert_validity(cert_pem)?;
    let life = not_after.duration_since(issued).unwrap_or_default();
    Ok(issued + life * 2 / 3)
}

/// A random positive 16-byte serial: unique without bookkeeping.
fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::Random)?;
    // Positive and without a leading zero byte, as RFC 5280 asks.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn first_cert_der(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    let mut reader = pem.as_bytes();
    let first = rustls_pemfile::certs(&mut reader).next();
    match first {
        Some(Ok(der)) => Ok(der),
        Some(Err(e)) => Err(PkiError::Pem(e.to_string())),
        None => Err(PkiError::Pem("no CERTIFICATE block found".into())),
    }
}

/// The two certificate fields we read, parsed by x509-parser (already in the
/// build through rcgen): `None` on anything that does not parse.
mod x509 {
    use x509_parser::prelude::{FromDer, X509Certificate};

    /// The subject's single CN; `None` if absent or repeated.
    pub(super) fn subject_common_name(der: &[u8]) -> Option<String> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let mut names = cert.subject().iter_common_name();
        let first = names.next()?.as_str().ok()?.to_string();
        names.next().is_none().then_some(first)
    }

    /// (not before, not after) in unix seconds.
    pub(super) fn validity(der: &[u8]) -> Option<(i64, i64)> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let v = cert.validity();
        Some((v.not_before.timestamp(), v.not_after.timestamp()))
    }

    pub(super) fn serial(der: &[u8]) -> Option<Vec<u8>> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        Some(cert.raw_serial().to_vec())
    }

    /// The whole SubjectPublicKeyInfo, DER.
    pub(super) fn subject_public_key_info(der: &[u8]) -> Option<Vec<u8>> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        Some(cert.public_key().raw.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crl_lists_the_revoked_serials_under_the_ca() {
        use x509_parser::prelude::{FromDer, X509Certificate};
        use x509_parser::revocation_list::CertificateRevocationList;
        let ca = ClusterCa::generate("lab").expect("ca");
        let (_, csr) = node_key_and_csr("fog").unwrap();
        let cert = ca.sign_node_csr(&csr, "fog", 30).unwrap();
        let serial = cert_serial_pem(&cert).unwrap();
        let when = SystemTime::now();
        let pem = ca.crl_pem(&[(serial.clone(), when)], 7).unwrap();
        let der = rustls_pemfile::crls(&mut pem.as_bytes()).next().expect("a CRL").unwrap();
        let (_, crl) = CertificateRevocationList::from_der(der.as_ref()).unwrap();
        let listed: Vec<&[u8]> = crl.iter_revoked_certificates().map(|r| r.raw_serial()).collect();
        assert_eq!(listed, vec![&serial[..]]);
        let (_, ca_cert) = X509Certificate::from_der(ca.cert_der()).unwrap();
        assert_eq!(crl.issuer(), ca_cert.subject());
        assert_eq!(crl.crl_number().map(|n| n.to_u64_digits()), Some(vec![7]));
        assert!(crl.next_update().is_some_and(|t| t.timestamp() > when.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64 + 86400));
    }

    #[test]
    fn a_node_certificate_is_due_for_renewal_two_thirds_into_its_life() {
        let ca = ClusterCa::generate("lab").expect("ca");
        let (_, csr) = node_key_and_csr("fog").unwrap();
        let before = SystemTime::now();
        let cert = ca.sign_node_csr_for(&csr, "fog", Duration::from_secs(300)).unwrap();
        let (issued, not_after) = cert_validity(&cert).unwrap();
        let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        assert!(secs(issued).abs_diff(secs(before)) <= 1, "issued at {issued:?}, signed at {before:?}");
        assert_eq!(secs(not_after) - secs(issued), 300);
        assert_eq!(secs(renewal_due(&cert).unwrap()) - secs(issued), 200);
        assert!(ca.sign_node_csr_for(&csr, "fog", Duration::from_secs(5)).is_err());
    }

    #[test]
    fn a_key_matches_only_its_own_certificate() {
        let ca = ClusterCa::generate("lab").expect("ca");
        let (key_a, csr_a) = node_key_and_csr("a").unwrap();
        let (key_b, _) = node_key_and_csr("a").unwrap();
        let cert = ca.sign_node_csr(&csr_a, "a", 1).unwrap();
        assert!(key_matches_cert(&key_a, &cert));
        assert!(!key_matches_cert(&key_b, &cert));
        assert!(!key_matches_cert("junk", &cert));
    }

    #[test]
    fn no_node_may_take_the_masters_certificate_name() {
        assert!(validate_node_name("fogmesh-master").is_err());
        assert!(validate_node_name("FOGMESH-MASTER").is_err());
        assert!(validate_node_name("fogmesh-master-2").is_ok());
    }

    #[test]
    fn ca_server_and_node_certificates() {
        let ca = ClusterCa::generate("lab").expect("ca");
        assert!(ca.cert_pem().contains("BEGIN CERTIFICATE"));
        assert!(ca.key_pem().contains("PRIVATE KEY"));
        let fp = ca.fingerprint();
        assert_eq!(fp.len(), 64);
        assert_eq!(fp, ca.fingerprint());
        assert_eq!(
            x509::subject_common_name(ca.cert_der()).as_deref(),
            Some("fogmesh CA lab")
        );

        let (cert, key) = ca
            .issue_server_cert(&["master.example.org".into(), "203.0.113.7".into()])
            .expect("server cert");
        assert!(cert.contains("BEGIN CERTIFICATE") && key.contains("PRIVATE KEY"));

        let (node_key, csr) = node_key_and_csr("pi-kitchen").expect("csr");
        assert!(node_key.contains("PRIVATE KEY") && csr.contains("CERTIFICATE REQUEST"));
        let node_cert = ca.sign_node_csr(&csr, "pi-kitchen", 90).expect("sign");
        let der = first_cert_der(&node_cert).expect("der");
        assert_eq!(node_name_from_cert(&der).as_deref(), Some("pi-kitchen"));
        assert_eq!(cert_fingerprint_der(&der).len(), 64);
    }

    #[test]
    fn the_ca_decides_the_node_name() {
        let ca = ClusterCa::generate("lab").expect("ca");
        let (_key, csr) = node_key_and_csr("pi-kitchen").expect("csr");
        let cert = ca.sign_node_csr(&csr, "pi-garage", 30).expect("sign");
        let der = first_cert_der(&cert).expect("der");
        assert_eq!(node_name_from_cert(&der).as_deref(), Some("pi-garage"));
    }

    #[test]
    fn ip_node_names_are_allowed() {
        let ca = ClusterCa::generate("lab").expect("ca");
        let (_key, csr) = node_key_and_csr("192.0.2.10").expect("csr");
        let cert = ca.sign_node_csr(&csr, "192.0.2.10", 30).expect("sign");
        let der = first_cert_der(&cert).expect("der");
        assert_eq!(node_name_from_cert(&der).as_deref(), Some("192.0.2.10"));
    }

    #[test]
    fn bad_csrs_and_names_are_rejected() {
        let ca = ClusterCa::generate("lab").expect("ca");
        assert!(matches!(
            ca.sign_node_csr("not a csr", "n1", 30),
            Err(PkiError::InvalidCsr(_))
        ));
        let (_key, csr) = node_key_and_csr("n1").expect("csr");
        // Flip one byte of the base64 body: signature or structure breaks.
        let mut lines: Vec<String> = csr.lines().map(str::to_owned).collect();
        let body = &mut lines[3];
        let replaced: String = body
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i == 10 {
                    if c == 'A' {
                        'B'
                    } else {
                        'A'
                    }
                } else {
                    c
                }
            })
            .collect();
        *body = replaced;
        let tampered = lines.join("\n");
        assert!(matches!(
            ca.sign_node_csr(&tampered, "n1", 30),
            Err(PkiError::InvalidCsr(_))
        ));
        assert!(matches!(
            ca.sign_node_csr(&csr, "bad/name", 30),
            Err(PkiError::InvalidName(_))
        ));
        assert!(matches!(
            ca.sign_node_csr(&csr, "", 30),
            Err(PkiError::InvalidName(_))
        ));
        assert!(matches!(
            ca.sign_node_csr(&csr, "n1", 0),
            Err(PkiError::InvalidValidity(_))
        ));
        assert!(node_name_from_cert(b"garbage").is_none());
        assert!(node_name_from_cert(&[]).is_none());
    }

    #[test]
    fn ca_round_trips_through_pem() {
        let ca = ClusterCa::generate("lab").expect("ca");
        let again = ClusterCa::from_pem(ca.cert_pem(), ca.key_pem()).expect("load");
        assert_eq!(ca.fingerprint(), again.fingerprint());
        // The reloaded CA still signs certificates under the same name.
        let (_key, csr) = node_key_and_csr("n1").expect("csr");
        again.sign_node_csr(&csr, "n1", 1).expect("sign");

        let other = ClusterCa::generate("other").expect("ca");
        assert!(matches!(
            ClusterCa::from_pem(ca.cert_pem(), other.key_pem()),
            Err(PkiError::KeyMismatch)
        ));
        assert!(ClusterCa::from_pem("nope", ca.key_pem()).is_err());
        assert!(ClusterCa::from_pem(ca.cert_pem(), "nope").is_err());
    }

    #[test]
    fn tokens_round_trip() {
        let ca = ClusterCa::generate("lab").expect("ca");
        let token = JoinToken::generate(&ca.fingerprint()).expect("token");
        assert_eq!(token.id.len(), 16);
        assert_eq!(token.secret.len(), 32);
        let text = token.to_string();
        assert!(text.starts_with("fmj1."));
        let parsed: JoinToken = text.parse().expect("parse");
        assert_eq!(parsed, token);
        let padded: JoinToken = format!("  {text}\n").parse().expect("parse");
        assert_eq!(padded, token);
        assert!(!format!("{token:?}").contains(&token.secret));
        assert!(constant_time_eq(
            &hash_secret(&parsed.secret),
            &hash_secret(&token.secret)
        ));
        assert_ne!(
            JoinToken::generate(&ca.fingerprint()).expect("token"),
            token
        );
    }

    #[test]
    fn malformed_and_forged_tokens_are_rejected() {
        let fp = "ab".repeat(32);
        let good = format!("fmj1.{}.{}.{fp}", "0".repeat(16), "1".repeat(32));
        assert!(good.parse::<JoinToken>().is_ok());
        let cases = [
            (String::new(), "fmj1"),
            (good.replace("fmj1", "fmj2"), "fmj1"),
            (format!("{good}.extra"), "4 parts"),
            (
                format!("fmj1.{}.{}", "0".repeat(16), "1".repeat(32)),
                "4 parts",
            ),
            (
                format!("fmj1.{}.{}.{fp}", "0".repeat(15), "1".repeat(32)),
                "id",
            ),
            (
                format!("fmj1.{}.{}.{fp}", "0".repeat(16), "g".repeat(32)),
                "secret",
            ),
            (
                format!("fmj1.{}.{}.{fp}", "0".repeat(16), "A".repeat(32)),
                "secret",
            ),
            (
                format!("fmj1.{}.{}.{}", "0".repeat(16), "1".repeat(32), &fp[1..]),
                "CA fingerprint",
            ),
            ("x".repeat(10_000), "longer"),
        ];
        for (input, part) in cases {
            match input.parse::<JoinToken>() {
                Err(PkiError::InvalidToken(why)) => {
                    assert!(why.contains(part), "{input:?}: {why}")
                }
                other => panic!("{input:?} gave {other:?}"),
            }
        }
        // A forged secret parses but does not match the stored hash.
        let stored = hash_secret(&"1".repeat(32));
        let forged: JoinToken = good
            .replace(&"1".repeat(32), &"2".repeat(32))
            .parse()
            .expect("parse");
        assert!(!constant_time_eq(&hash_secret(&forged.secret), &stored));
        assert!(JoinToken::generate("not-a-fingerprint").is_err());
    }

    #[test]
    fn helpers() {
        assert_eq!(random_hex(16).len(), 32);
        assert_ne!(random_hex(16), random_hex(16));
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "abcd"));
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(validate_node_name("edge-1.site_a").is_ok());
        assert!(validate_node_name("-edge").is_err());
        assert!(validate_node_name("2001:db8::1").is_ok());
    }
}

/// Signs with a node's key (ECDSA P-256, SHA-256): what lets the master
/// tell a node's metric batches from forged ones, whichever broker
/// carried them.
pub struct NodeSigner {
    key: ring::signature::EcdsaKeyPair,
}

impl NodeSigner {
    /// From the node's PKCS#8 key PEM (`node.key`).
    pub fn from_key_pem(pem: &str) -> Result<NodeSigner, PkiError> {
        let mut reader = pem.as_bytes();
        let der = rustls_pemfile::pkcs8_private_keys(&mut reader)
            .next()
            .ok_or_else(|| PkiError::Pem("no PRIVATE KEY block in the node key".into()))?
            .map_err(|e| PkiError::Pem(format!("node key: {e}")))?;
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(&ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING, der.secret_pkcs8_der(), &SystemRandom::new())
            .map_err(|e| PkiError::Pem(format!("node key is not ECDSA P-256: {e}")))?;
        Ok(NodeSigner { key })
    }

    /// The public key, as [`cert_public_key`] gives a certificate's.
    pub fn public_key(&self) -> Vec<u8> {
        use ring::signature::KeyPair;
        self.key.public_key().as_ref().to_vec()
    }

    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, PkiError> {
        self.key
            .sign(&SystemRandom::new(), message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| PkiError::Pem("signing failed".into()))
    }
}

/// The public key (SubjectPublicKeyInfo bit string) of a certificate PEM,
/// for [`verify_node_signature`].
pub fn cert_public_key(cert_pem: &str) -> Result<Vec<u8>, PkiError> {
    let der = first_cert_der(cert_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| PkiError::Pem(format!("certificate: {e}")))?;
    Ok(cert.public_key().subject_public_key.data.to_vec())
}

/// Whether a node key (PEM) is the one a certificate (PEM) was issued for.
pub fn key_matches_cert(key_pem: &str, cert_pem: &str) -> bool {
    match (NodeSigner::from_key_pem(key_pem), cert_public_key(cert_pem)) {
        (Ok(key), Ok(public)) => key.public_key() == public,
        _ => false,
    }
}

/// Whether `signature` is the node key's signature of `message`.
pub fn verify_node_signature(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, public_key).verify(message, signature).is_ok()
}

#[cfg(test)]
mod signing_tests {
    use super::*;

    #[test]
    fn a_node_signs_and_only_its_certificate_verifies() {
        let ca = ClusterCa::generate("t").unwrap();
        let (key_a, csr_a) = node_key_and_csr("a").unwrap();
        let (key_b, csr_b) = node_key_and_csr("b").unwrap();
        let cert_a = ca.sign_node_csr(&csr_a, "a", 1).unwrap();
        let cert_b = ca.sign_node_csr(&csr_b, "b", 1).unwrap();
        let sig = NodeSigner::from_key_pem(&key_a).unwrap().sign(b"batch").unwrap();
        assert!(verify_node_signature(&cert_public_key(&cert_a).unwrap(), b"batch", &sig));
        assert!(!verify_node_signature(&cert_public_key(&cert_b).unwrap(), b"batch", &sig), "b's key does not vouch for a's batch");
        assert!(!verify_node_signature(&cert_public_key(&cert_a).unwrap(), b"batcH", &sig));
        let _ = key_b;
    }
}
