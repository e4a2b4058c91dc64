//! TLS material for the replication channel: rustls server and client configurations
//! from the `replication { tls_cert, tls_key, tls_ca, tls_mutual }` PEM files.
//!
//! - Server: presents `tls_cert`/`tls_key`; with `tls_mutual` it requires a client
//!   certificate that chains to `tls_ca` and carries the clientAuth usage.
//! - Client: verifies the server's certificate against `tls_ca` and the address it
//!   dialled (an IP SAN; a DNS name when [`ClientTls::server_name`] is set); presents
//!   its own certificate when it has one.
//! - TLS 1.3 only, ring provider, ALPN `hasync-channel/1`.
//!
//! Files are checked when loaded, so the agent fails at start with the file and the
//! problem (unreadable, not PEM, no key, key not matching the certificate, expired)
//! instead of at the first handshake.

use std::{
    fmt, io,
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
    server::WebPkiClientVerifier,
};

use crate::config::schema::Replication;

/// ALPN protocol id: a hasync channel only talks to a hasync channel.
pub const ALPN: &[u8] = b"hasync-channel/1";

/// The PEM files of `replication { ... }`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub mutual: bool,
}

impl TlsFiles {
    /// The TLS settings of a replication block; `None` when none is set.
    pub fn from_replication(r: &Replication) -> Option<TlsFiles> {
        let f = TlsFiles {
            cert: r.tls_cert.clone(),
            key: r.tls_key.clone(),
            ca: r.tls_ca.clone(),
            mutual: r.tls_mutual,
        };
        (f.cert.is_some() || f.key.is_some() || f.ca.is_some() || f.mutual).then_some(f)
    }
}

/// A problem with the TLS files or settings. Messages name the setting and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("`{attr}` {}: cannot be read: {source}", path.display())]
    Read {
        attr: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("`{attr}` {}: {reason}", path.display())]
    Invalid {
        attr: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("`{attr}` {}: certificate {subject} expired on {not_after}", path.display())]
    Expired {
        attr: &'static str,
        path: PathBuf,
        subject: String,
        not_after: String,
    },
    #[error("`{attr}` {}: certificate {subject} is not valid before {not_before}", path.display())]
    NotYetValid {
        attr: &'static str,
        path: PathBuf,
        subject: String,
        not_before: String,
    },
    #[error(
        "`tls_key` {} does not belong to the certificate in `tls_cert` {}",
        key.display(),
        cert.display()
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{0}")]
    Missing(&'static str),
    #[error("building the TLS {side} configuration: {reason}")]
    Build { side: &'static str, reason: String },
}

/// What a loaded certificate says about itself (for logs and the CLI).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSummary {
    /// `CN=...` (or the whole subject when it has no CN).
    pub subject: String,
    pub not_before: i64,
    pub not_after: i64,
}

impl CertSummary {
    /// Parses a DER certificate.
    pub fn parse(der: &[u8]) -> Result<CertSummary, String> {
        let (_, c) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
        let cn = c
            .subject()
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok());
        Ok(CertSummary {
            subject: match cn {
                Some(cn) => format!("CN={cn}"),
                None => c.subject().to_string(),
            },
            not_before: c.validity().not_before.timestamp(),
            not_after: c.validity().not_after.timestamp(),
        })
    }

    /// The CN alone, when present.
    pub fn common_name(&self) -> Option<&str> {
        self.subject.strip_prefix("CN=")
    }
}

/// `2026-07-01 12:00:00 UTC`.
pub fn format_time(unix: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => format!("@{unix}"),
    }
}

fn now_unix() -> i64 {
    match SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

fn read(attr: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        attr,
        path: path.to_path_buf(),
        source,
    })
}

fn invalid(attr: &'static str, path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        attr,
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The PEM section labels in `bytes`, for error messages ("found PRIVATE KEY").
fn labels(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("-----BEGIN "))
        .filter_map(|l| l.strip_suffix("-----"))
        .map(str::to_string)
        .collect()
}

/// Every certificate in a PEM file, each checked for its validity period.
pub fn load_certs(
    attr: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(attr, path)?;
    let mut certs = Vec::new();
    for item in CertificateDer::pem_slice_iter(&bytes) {
        certs.push(item.map_err(|e| invalid(attr, path, format!("bad PEM: {e}")))?);
    }
    if certs.is_empty() {
        let found = labels(&bytes);
        return Err(invalid(
            attr,
            path,
            if found.is_empty() {
                "not a PEM file (expected -----BEGIN CERTIFICATE-----)".to_string()
            } else {
                format!(
                    "no CERTIFICATE in the PEM file (found {})",
                    found.join(", ")
                )
            },
        ));
    }
    let now = now_unix();
    for der in &certs {
        let s = CertSummary::parse(der)
            .map_err(|e| invalid(attr, path, format!("not a valid X.509 certificate: {e}")))?;
        if now > s.not_after {
            return Err(TlsError::Expired {
                attr,
                path: path.to_path_buf(),
                subject: s.subject,
                not_after: format_time(s.not_after),
            });
        }
        if now < s.not_before {
            return Err(TlsError::NotYetValid {
                attr,
                path: path.to_path_buf(),
                subject: s.subject,
                not_before: format_time(s.not_before),
            });
        }
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, SEC1 or PKCS#1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let attr = "tls_key";
    let bytes = read(attr, path)?;
    match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(k) => {
            warn_if_readable_by_others(path);
            Ok(k)
        }
        Err(rustls::pki_types::pem::Error::NoItemsFound) => {
            let found = labels(&bytes);
            Err(invalid(
                attr,
                path,
                if found.iter().any(|l| l.contains("ENCRYPTED")) {
                    "the private key is encrypted; hasync needs an unencrypted key (mode 0600)"
                        .to_string()
                } else if found.is_empty() {
                    "not a PEM file (expected -----BEGIN PRIVATE KEY-----)".to_string()
                } else {
                    format!(
                        "no private key in the PEM file (found {})",
                        found.join(", ")
                    )
                },
            ))
        }
        Err(e) => Err(invalid(attr, path, format!("bad PEM: {e}"))),
    }
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(m) = std::fs::metadata(path)
        && m.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            file = %path.display(),
            mode = format!("{:o}", m.permissions().mode() & 0o777),
            "tls_key is readable by group or others; chmod 600 it"
        );
    }
}

/// The CA bundle that verifies the peer.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for der in load_certs("tls_ca", path)? {
        roots
            .add(der)
            .map_err(|e| invalid("tls_ca", path, format!("unusable CA certificate: {e}")))?;
    }
    Ok(roots)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// This node's certificate chain and key, checked to belong together.
fn identity(
    files: &TlsFiles,
    provider: &CryptoProvider,
) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, TlsError> {
    let (cert, key) = match (&files.cert, &files.key) {
        (Some(c), Some(k)) => (c, k),
        (None, None) => return Ok(None),
        _ => {
            return Err(TlsError::Missing(
                "`tls_cert` and `tls_key` go together: set both",
            ));
        }
    };
    let chain = load_certs("tls_cert", cert)?;
    let key_der = load_key(key)?;
    let signer = provider
        .key_provider
        .load_private_key(key_der.clone_key())
        .map_err(|e| invalid("tls_key", key, format!("unsupported private key: {e}")))?;
    match rustls::sign::CertifiedKey::new(chain.clone(), signer).keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(TlsError::KeyMismatch {
                cert: cert.clone(),
                key: key.clone(),
            });
        }
        Err(e) => return Err(invalid("tls_cert", cert, e.to_string())),
    }
    Ok(Some((chain, key_der)))
}

fn build_err(side: &'static str) -> impl FnOnce(rustls::Error) -> TlsError {
    move |e| TlsError::Build {
        side,
        reason: e.to_string(),
    }
}

/// The channel server's configuration: certificate and key required; with `mutual`,
/// clients must present a certificate that chains to `tls_ca`.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let Some((chain, key)) = identity(files, &provider)? else {
        return Err(TlsError::Missing(
            "the replication channel server needs `tls_cert` and `tls_key`",
        ));
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(build_err("server"))?;
    let builder = if files.mutual {
        let ca = files.ca.as_deref().ok_or(TlsError::Missing(
            "`tls_mutual` = true requires `tls_ca` to verify client certificates",
        ))?;
        let roots = Arc::new(load_roots(ca)?);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| TlsError::Build {
                side: "server",
                reason: e.to_string(),
            })?;
        builder.with_client_cert_verifier(verifier)
    } else {
        tracing::warn!(
            "replication channel without `tls_mutual`: any host that reaches `listen_addr` \
             can read this node's connection table; set tls_mutual = true"
        );
        builder.with_no_client_auth()
    };
    let mut cfg = builder
        .with_single_cert(chain, key)
        .map_err(build_err("server"))?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(cfg))
}

/// A client configuration plus the name to verify in the server's certificate.
#[derive(Clone)]
pub struct ClientTls {
    pub config: Arc<ClientConfig>,
    /// Checked against the server's certificate; `None`: the IP address dialled
    /// (which must be an IP SAN of the server's certificate).
    pub server_name: Option<ServerName<'static>>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Verify a DNS SAN (e.g. "primary.ha.example") instead of the dialled IP.
    pub fn with_server_name(mut self, name: &str) -> Result<ClientTls, TlsError> {
        let n = ServerName::try_from(name.to_string())
            .map_err(|_| TlsError::Missing("invalid TLS server name"))?;
        self.server_name = Some(n);
        Ok(self)
    }
}

/// The channel client's configuration: `tls_ca` required (the primary must prove its
/// identity); the node's certificate is presented when configured (required with
/// `mutual`).
pub fn client_config(files: &TlsFiles) -> Result<ClientTls, TlsError> {
    let provider = provider();
    let ca = files.ca.as_deref().ok_or(TlsError::Missing(
        "the replication channel client needs `tls_ca` to verify the primary's certificate",
    ))?;
    let roots = load_roots(ca)?;
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(build_err("client"))?
        .with_root_certificates(roots);
    let mut cfg = match identity(files, &provider)? {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(build_err("client"))?,
        None if files.mutual => {
            return Err(TlsError::Missing(
                "`tls_mutual` = true requires `tls_cert` and `tls_key`: this node must present a certificate",
            ));
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(ClientTls {
        config: Arc::new(cfg),
        server_name: None,
    })
}

/// Why a TLS handshake (or the first read after it) failed, for counters and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Refusal {
    /// The client presented no certificate while one is required.
    NoClientCert,
    /// The peer's certificate does not chain to `tls_ca` (other CA, self-signed,
    /// forged signature).
    UnknownCa,
    /// The peer's certificate (or its CA) is expired or not yet valid.
    Expired,
    /// Any other certificate problem: wrong name or address, wrong usage, bad encoding.
    BadCert,
    /// The peer refused our certificate (it sent an alert).
    PeerRefused,
    /// Not TLS, or TLS this side does not accept (version, ALPN, protocol violation).
    Protocol,
    /// The handshake did not finish in time.
    Timeout,
    /// The connection failed during the handshake.
    Io,
}

impl Refusal {
    pub const COUNT: usize = 8;
    pub const ALL: [Refusal; Refusal::COUNT] = [
        Refusal::NoClientCert,
        Refusal::UnknownCa,
        Refusal::Expired,
        Refusal::BadCert,
        Refusal::PeerRefused,
        Refusal::Protocol,
        Refusal::Timeout,
        Refusal::Io,
    ];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NoClientCert => "no_client_cert",
            Refusal::UnknownCa => "unknown_ca",
            Refusal::Expired => "expired",
            Refusal::BadCert => "bad_cert",
            Refusal::PeerRefused => "peer_refused",
            Refusal::Protocol => "protocol",
            Refusal::Timeout => "timeout",
            Refusal::Io => "io",
        }
    }

    /// For log lines.
    pub fn describe(self) -> &'static str {
        match self {
            Refusal::NoClientCert => "no client certificate",
            Refusal::UnknownCa => "certificate not signed by the configured CA",
            Refusal::Expired => "certificate expired or not yet valid",
            Refusal::BadCert => "certificate not acceptable",
            Refusal::PeerRefused => "the peer refused our certificate",
            Refusal::Protocol => "not a hasync TLS 1.3 channel",
            Refusal::Timeout => "handshake timed out",
            Refusal::Io => "connection failed during the handshake",
        }
    }
}

/// The rustls error inside an I/O error from tokio-rustls, if any.
pub fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// Classifies a failed handshake (or a read that surfaced the peer's alert).
pub fn classify(e: &io::Error) -> Refusal {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let Some(r) = rustls_error(e) else {
        return match e.kind() {
            io::ErrorKind::TimedOut => Refusal::Timeout,
            io::ErrorKind::InvalidData => Refusal::Protocol,
            _ => Refusal::Io,
        };
    };
    match r {
        E::NoCertificatesPresented => Refusal::NoClientCert,
        E::InvalidCertificate(c) => match c {
            C::UnknownIssuer | C::BadSignature => Refusal::UnknownCa,
            C::Expired
            | C::ExpiredContext { .. }
            | C::NotValidYet
            | C::NotValidYetContext { .. } => Refusal::Expired,
            _ => Refusal::BadCert,
        },
        E::AlertReceived(
            A::CertificateRequired
            | A::UnknownCA
            | A::BadCertificate
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::CertificateRevoked
            | A::UnsupportedCertificate
            | A::AccessDenied
            | A::DecryptError,
        ) => Refusal::PeerRefused,
        _ => Refusal::Protocol,
    }
}

/// The peer's identity from its leaf certificate, for logs.
pub fn peer_subject(certs: Option<&[CertificateDer<'_>]>) -> Option<String> {
    let leaf = certs?.first()?;
    CertSummary::parse(leaf).ok().map(|s| s.subject)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_and_certificate_errors_are_classified() {
        let wrap = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        let cases = [
            (
                rustls::Error::NoCertificatesPresented,
                Refusal::NoClientCert,
            ),
            (
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
                Refusal::UnknownCa,
            ),
            (
                rustls::Error::InvalidCertificate(rustls::CertificateError::Expired),
                Refusal::Expired,
            ),
            (
                rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName),
                Refusal::BadCert,
            ),
            (
                rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired),
                Refusal::PeerRefused,
            ),
            (
                rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol),
                Refusal::Protocol,
            ),
        ];
        for (e, want) in cases {
            let d = format!("{e}");
            assert_eq!(classify(&wrap(e)), want, "{d}");
        }
        assert_eq!(
            classify(&io::Error::from(io::ErrorKind::TimedOut)),
            Refusal::Timeout
        );
        assert_eq!(
            classify(&io::Error::from(io::ErrorKind::ConnectionReset)),
            Refusal::Io
        );
    }

    #[test]
    fn times_are_readable() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_time(1_767_225_600), "2026-01-01 00:00:00 UTC");
    }
}
