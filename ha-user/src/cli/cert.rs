//! `hasync cert`: the cluster's private CA and the nodes' certificates for the
//! replication channel, in the spirit of Vault replication (a CA the operator owns;
//! every node proves itself with a certificate from it; mutual TLS).
//!
//! ```text
//! hasync cert init  --dir /etc/hasync/ca [--name "hasync CA"] [--days 3650]
//! hasync cert issue --dir /etc/hasync/ca --name node-a --ip 10.250.0.1 [--ip ..]
//!                   [--dns ..] [--days 825] [--client-only] [--out DIR]
//! ```
//!
//! Keys are ECDSA P-256, written with mode 0600; nothing is ever overwritten. Node
//! certificates carry the serverAuth and clientAuth usages (either node may be primary)
//! and IP SANs: a replica dials the primary by address and verifies that address.

use std::{
    fs,
    io::{self, Write as _},
    net::IpAddr,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    process::ExitCode,
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject as _;
use time::{Duration, OffsetDateTime};

use crate::channel::tls::{CertSummary, format_time};

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";
/// Longest validity accepted (100 years).
pub const MAX_DAYS: u32 = 36_500;

/// `hasync cert ...`
#[derive(clap::Subcommand, Debug, Clone)]
pub enum CertCmd {
    /// Create the cluster's CA: DIR/ca.pem (give it to every node as `tls_ca`) and
    /// DIR/ca-key.pem (keep it offline; it signs node certificates). Never overwrites.
    Init {
        /// Directory for the CA (created, mode 0700, when missing).
        #[arg(long)]
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "hasync replication CA")]
        name: String,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a node certificate signed by the CA in DIR: NAME.pem and NAME-key.pem.
    Issue {
        /// Directory holding ca.pem and ca-key.pem (from `cert init`).
        #[arg(long)]
        dir: PathBuf,
        /// The node's name: certificate CN and file names (letters, digits, . _ -).
        #[arg(long)]
        name: String,
        /// An address the node is reached at (IP SAN); repeat for several. A replica
        /// verifies the primary's certificate against the address in `primary_addr`.
        #[arg(long = "ip")]
        ips: Vec<IpAddr>,
        /// A DNS name for the node (DNS SAN); repeat for several.
        #[arg(long = "dns")]
        dns: Vec<String>,
        /// Validity in days (capped at the CA's own expiry).
        #[arg(long, default_value_t = 825)]
        days: u32,
        /// Client certificate only (clientAuth): the node can never serve the channel.
        #[arg(long)]
        client_only: bool,
        /// Where to write the node's files (default: DIR).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{} already exists; refusing to overwrite it (move it away first)", .0.display())]
    Exists(PathBuf),
    #[error("{0}")]
    Invalid(String),
    #[error("{op}: {source}")]
    Rcgen {
        op: &'static str,
        source: rcgen::Error,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CertError {
    let path = path.to_path_buf();
    move |source| CertError::Io { op, path, source }
}

fn rc(op: &'static str) -> impl FnOnce(rcgen::Error) -> CertError {
    move |source| CertError::Rcgen { op, source }
}

/// What `init` wrote.
#[derive(Clone, Debug)]
pub struct CaFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub not_after: i64,
}

/// What `issue` wrote.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub subject: String,
    pub sans: Vec<String>,
    pub not_after: i64,
    /// The validity was shortened to the CA's.
    pub capped: bool,
}

/// Options of `cert issue`.
#[derive(Clone, Debug)]
pub struct IssueOptions {
    pub dir: PathBuf,
    pub name: String,
    pub ips: Vec<IpAddr>,
    pub dns: Vec<String>,
    pub days: u32,
    pub client_only: bool,
    pub out: Option<PathBuf>,
    /// Start of validity (default: an hour ago, for clock skew). For tests.
    pub valid_from: Option<OffsetDateTime>,
}

impl IssueOptions {
    pub fn new(dir: impl Into<PathBuf>, name: &str, ips: &[IpAddr]) -> IssueOptions {
        IssueOptions {
            dir: dir.into(),
            name: name.to_string(),
            ips: ips.to_vec(),
            dns: Vec::new(),
            days: 825,
            client_only: false,
            out: None,
            valid_from: None,
        }
    }
}

/// A node name usable as a file name and CN.
pub fn check_node_name(name: &str) -> Result<(), CertError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(CertError::Invalid(format!(
            "--name {name:?}: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )))
    }
}

fn check_days(days: u32) -> Result<(), CertError> {
    if (1..=MAX_DAYS).contains(&days) {
        Ok(())
    } else {
        Err(CertError::Invalid(format!(
            "--days {days}: must be between 1 and {MAX_DAYS}"
        )))
    }
}

fn serial() -> Result<SerialNumber, CertError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b)
        .map_err(|e| CertError::Invalid(format!("drawing a serial number: {e}")))?;
    // Positive and without a leading zero byte: 16 significant bytes.
    b[0] = (b[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&b))
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "hasync");
    dn.push(DnType::CommonName, cn);
    dn
}

fn make_dir(dir: &Path) -> Result<(), CertError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("creating directory", dir))
}

/// Writes a new file (never replacing one) with `mode`.
fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), CertError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                CertError::Exists(path.to_path_buf())
            } else {
                CertError::Io {
                    op: "creating",
                    path: path.to_path_buf(),
                    source: e,
                }
            }
        })?;
    f.write_all(contents.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io_err("writing", path))
}

/// Refuses when any of `paths` exists, before anything is written.
fn none_exist(paths: &[&Path]) -> Result<(), CertError> {
    for p in paths {
        if fs::symlink_metadata(p).is_ok() {
            return Err(CertError::Exists(p.to_path_buf()));
        }
    }
    Ok(())
}

/// Writes the key (0600) then the certificate (0644); on failure removes what it wrote.
fn write_pair(cert: &Path, cert_pem: &str, key: &Path, key_pem: &str) -> Result<(), CertError> {
    none_exist(&[cert, key])?;
    write_new(key, key_pem, 0o600)?;
    if let Err(e) = write_new(cert, cert_pem, 0o644) {
        let _ = fs::remove_file(key);
        return Err(e);
    }
    Ok(())
}

fn absolute(p: &Path) -> PathBuf {
    fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// `cert init`: a new CA in `dir`.
pub fn init(dir: &Path, cn: &str, days: u32) -> Result<CaFiles, CertError> {
    check_days(days)?;
    if cn.trim().is_empty() || cn.len() > 64 || cn.chars().any(char::is_control) {
        return Err(CertError::Invalid(format!(
            "--name {cn:?}: 1 to 64 printable characters"
        )));
    }
    let cert_path = dir.join(CA_CERT);
    let key_path = dir.join(CA_KEY);
    none_exist(&[&cert_path, &key_path])?;
    let now = OffsetDateTime::now_utc();
    let mut p = CertificateParams::default();
    p.distinguished_name = name(cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(i64::from(days));
    p.serial_number = Some(serial()?);
    let key = KeyPair::generate().map_err(rc("generating the CA key"))?;
    let cert = p
        .self_signed(&key)
        .map_err(rc("signing the CA certificate"))?;
    make_dir(dir)?;
    write_pair(&cert_path, &cert.pem(), &key_path, &key.serialize_pem())?;
    Ok(CaFiles {
        cert: absolute(&cert_path),
        key: absolute(&key_path),
        not_after: p.not_after.unix_timestamp(),
    })
}

fn read_text(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(io_err("reading", path))
}

/// The CA of `dir`: its signer, validity end and certificate path.
fn load_ca(dir: &Path) -> Result<(Issuer<'static, KeyPair>, i64, PathBuf), CertError> {
    let cert_path = dir.join(CA_CERT);
    let key_path = dir.join(CA_KEY);
    let cert_pem = read_text(&cert_path)?;
    let key_pem = read_text(&key_path)?;
    let bad = |p: &Path, what: &str| CertError::Invalid(format!("{}: {what}", p.display()));
    let der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| bad(&cert_path, &format!("no PEM certificate: {e}")))?;
    let (_, x509) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| bad(&cert_path, &format!("not a valid X.509 certificate: {e}")))?;
    if !x509.is_ca() {
        return Err(bad(&cert_path, "not a CA certificate"));
    }
    let key = KeyPair::from_pem(&key_pem)
        .map_err(|e| bad(&key_path, &format!("not a usable private key: {e}")))?;
    if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(bad(
            &key_path,
            &format!("this key does not belong to {}", cert_path.display()),
        ));
    }
    let s = CertSummary::parse(&der).map_err(|e| bad(&cert_path, &e))?;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    if now > s.not_after {
        return Err(bad(
            &cert_path,
            &format!("the CA expired on {}", format_time(s.not_after)),
        ));
    }
    let issuer = Issuer::from_ca_cert_der(&der, key).map_err(rc("reading the CA certificate"))?;
    Ok((issuer, s.not_after, cert_path))
}

/// `cert issue`: a node certificate signed by the CA in `o.dir`.
pub fn issue(o: &IssueOptions) -> Result<Issued, CertError> {
    check_node_name(&o.name)?;
    check_days(o.days)?;
    if o.ips.is_empty() && o.dns.is_empty() && !o.client_only {
        return Err(CertError::Invalid(
            "give the node's address with --ip (and/or --dns): the peer verifies it when it \
             dials this node; use --client-only for a node that never serves the channel"
                .into(),
        ));
    }
    let out = o.out.clone().unwrap_or_else(|| o.dir.clone());
    let cert_path = out.join(format!("{}.pem", o.name));
    let key_path = out.join(format!("{}-key.pem", o.name));
    none_exist(&[&cert_path, &key_path])?;
    let (issuer, ca_not_after, ca_path) = load_ca(&o.dir)?;

    let mut p = CertificateParams::default();
    p.distinguished_name = name(&o.name);
    let mut sans = Vec::new();
    for ip in &o.ips {
        p.subject_alt_names.push(SanType::IpAddress(*ip));
        sans.push(format!("IP:{ip}"));
    }
    for d in &o.dns {
        let n = rcgen::string::Ia5String::try_from(d.as_str())
            .map_err(|_| CertError::Invalid(format!("--dns {d:?}: not a DNS name")))?;
        if d.is_empty() || d.parse::<IpAddr>().is_ok() {
            return Err(CertError::Invalid(format!(
                "--dns {d:?}: not a DNS name (use --ip for addresses)"
            )));
        }
        p.subject_alt_names.push(SanType::DnsName(n));
        sans.push(format!("DNS:{d}"));
    }
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = if o.client_only {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    } else {
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ]
    };
    p.use_authority_key_identifier_extension = true;
    let from = o
        .valid_from
        .unwrap_or_else(|| OffsetDateTime::now_utc() - Duration::hours(1));
    p.not_before = from;
    p.not_after = from + Duration::days(i64::from(o.days));
    let mut capped = false;
    if p.not_after.unix_timestamp() > ca_not_after
        && let Ok(t) = OffsetDateTime::from_unix_timestamp(ca_not_after)
    {
        p.not_after = t;
        capped = true;
    }
    p.serial_number = Some(serial()?);
    let key = KeyPair::generate().map_err(rc("generating the node key"))?;
    let cert = p
        .signed_by(&key, &issuer)
        .map_err(rc("signing the node certificate"))?;
    make_dir(&out)?;
    write_pair(&cert_path, &cert.pem(), &key_path, &key.serialize_pem())?;
    Ok(Issued {
        cert: absolute(&cert_path),
        key: absolute(&key_path),
        ca: absolute(&ca_path),
        subject: format!("CN={}", o.name),
        sans,
        not_after: p.not_after.unix_timestamp(),
        capped,
    })
}

/// Runs `hasync cert ...`, printing what was written and the configuration to use.
pub fn main(cmd: CertCmd) -> ExitCode {
    let r = match cmd {
        CertCmd::Init { dir, name, days } => init(&dir, &name, days).map(|ca| {
            println!("wrote {} (CA certificate, CN={name})", ca.cert.display());
            println!("wrote {} (CA private key, mode 0600)", ca.key.display());
            println!("valid until {}", format_time(ca.not_after));
            println!();
            println!("Next: issue a certificate for every node, e.g.");
            println!(
                "  hasync cert issue --dir {} --name node-a --ip 10.250.0.1",
                dir.display()
            );
            println!(
                "Copy ca.pem to every node; keep ca-key.pem off the nodes if you can \
                 (it is only needed to issue certificates)."
            );
        }),
        CertCmd::Issue {
            dir,
            name,
            ips,
            dns,
            days,
            client_only,
            out,
        } => {
            let o = IssueOptions {
                dir,
                name,
                ips,
                dns,
                days,
                client_only,
                out,
                valid_from: None,
            };
            issue(&o).map(|i| {
                let usage = if o.client_only {
                    "client only"
                } else {
                    "server and client"
                };
                println!(
                    "wrote {} (certificate, {}, {usage}, {})",
                    i.cert.display(),
                    i.subject,
                    if i.sans.is_empty() {
                        "no SAN".to_string()
                    } else {
                        i.sans.join(", ")
                    }
                );
                println!("wrote {} (private key, mode 0600)", i.key.display());
                println!(
                    "valid until {}{}",
                    format_time(i.not_after),
                    if i.capped {
                        " (the CA's own expiry)"
                    } else {
                        ""
                    }
                );
                println!();
                println!(
                    "On node {}, in the `replication` block (copy the files there first if \
                     this is another host):",
                    o.name
                );
                println!("  tls_cert   = \"{}\"", i.cert.display());
                println!("  tls_key    = \"{}\"", i.key.display());
                println!("  tls_ca     = \"{}\"", i.ca.display());
                println!("  tls_mutual = true");
            })
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hasync cert: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "hasync-cert-{tag}-{}-{:x}",
            std::process::id(),
            OffsetDateTime::now_utc().unix_timestamp_nanos() as u64
        ));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn init_then_issue_and_refuse_to_overwrite() {
        let dir = tmp("init");
        let ca = init(&dir, "test CA", 30).unwrap();
        assert_eq!(mode(&ca.key), 0o600);
        assert_eq!(mode(&dir), 0o700);
        assert!(matches!(init(&dir, "again", 30), Err(CertError::Exists(_))));

        let ip: IpAddr = "10.250.0.2".parse().unwrap();
        let mut o = IssueOptions::new(&dir, "node-b", &[ip]);
        o.dns = vec!["node-b.ha.example".into()];
        o.days = 365;
        let i = issue(&o).unwrap();
        assert!(i.capped, "capped at the CA's 30 days");
        assert_eq!(mode(&i.key), 0o600);
        assert_eq!(i.sans, vec!["IP:10.250.0.2", "DNS:node-b.ha.example"]);
        assert!(matches!(issue(&o), Err(CertError::Exists(_))));

        let der = fs::read(&i.cert).unwrap();
        let der = rustls::pki_types::CertificateDer::from_pem_slice(&der).unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(!x.is_ca());
        let eku = x.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_input_is_refused() {
        let dir = tmp("bad");
        assert!(matches!(
            issue(&IssueOptions::new(&dir, "../etc", &[])),
            Err(CertError::Invalid(_))
        ));
        assert!(matches!(
            issue(&IssueOptions::new(&dir, "n", &[])),
            Err(CertError::Invalid(_))
        ));
        // No CA yet.
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(matches!(
            issue(&IssueOptions::new(&dir, "n", &[ip])),
            Err(CertError::Io { .. })
        ));
        assert!(matches!(init(&dir, "x", 0), Err(CertError::Invalid(_))));
        assert!(!dir.exists(), "nothing written on refusal");
    }

    #[test]
    fn a_foreign_ca_key_is_refused() {
        let a = tmp("ka");
        let b = tmp("kb");
        init(&a, "A", 10).unwrap();
        init(&b, "B", 10).unwrap();
        fs::remove_file(a.join(CA_KEY)).unwrap();
        fs::copy(b.join(CA_KEY), a.join(CA_KEY)).unwrap();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let e = issue(&IssueOptions::new(&a, "n", &[ip])).unwrap_err();
        assert!(e.to_string().contains("does not belong"), "{e}");
        fs::remove_dir_all(&a).unwrap();
        fs::remove_dir_all(&b).unwrap();
    }
}
