//! The TCP/TLS replication channel over real sockets on loopback: certificates from
//! `hasync cert`, a mutual-TLS bulk resync, and everything that must be refused
//! (no client certificate, a foreign CA on either side, an expired certificate, a
//! wrong address, plaintext, malformed frames, idle and slow peers) while the server
//! keeps serving good peers. Unprivileged: no namespaces needed.

use std::{
    future::Future,
    io::Write as _,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hasync::{
    channel::{
        ChannelClient, ChannelError, ChannelOptions, ChannelServer, ChannelStats, ClientTls,
        FrameErrorKind, PeerInfo, Refusal, TlsError, TlsFiles, client_config,
        frame::{self, FrameType},
        message::{ErrorCode, Hello, Message},
        server_config,
        tls::load_roots,
    },
    cli::cert::{self, IssueOptions},
    conntrack::{Change, Entry, ProtoInfo, Tuple, Zone, proto},
    sync::wire::record,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// A scratch directory removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("hasync-tls-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        Dir(d)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Two CAs (the cluster's and a rogue one) and node certificates, made with the CLI code.
struct Pki {
    dir: Dir,
}

impl Pki {
    fn new(tag: &str) -> Pki {
        let dir = Dir::new(tag);
        cert::init(&dir.path("ca"), "cluster CA", 30).unwrap();
        cert::init(&dir.path("rogue"), "rogue CA", 30).unwrap();
        let issue = |ca: &str, name: &str, ips: &[IpAddr], f: &dyn Fn(&mut IssueOptions)| {
            let mut o = IssueOptions::new(dir.path(ca), name, ips);
            o.days = 10;
            f(&mut o);
            cert::issue(&o).unwrap();
        };
        issue("ca", "node-a", &[LOOPBACK], &|o| {
            o.dns = vec!["node-a.ha.example".into()]
        });
        issue("ca", "node-b", &["127.0.0.2".parse().unwrap()], &|_| {});
        issue("ca", "client-only", &[], &|o| o.client_only = true);
        issue("ca", "expired", &[LOOPBACK], &|o| {
            o.valid_from = Some(time::OffsetDateTime::now_utc() - time::Duration::days(10));
            o.days = 1;
        });
        issue("rogue", "impostor", &[LOOPBACK], &|_| {});
        Pki { dir }
    }

    fn files(&self, ca: &str, node: Option<&str>, issuer: &str, mutual: bool) -> TlsFiles {
        TlsFiles {
            cert: node.map(|n| self.dir.path(issuer).join(format!("{n}.pem"))),
            key: node.map(|n| self.dir.path(issuer).join(format!("{n}-key.pem"))),
            ca: Some(self.dir.path(ca).join("ca.pem")),
            mutual,
        }
    }

    /// Node `n` of the cluster CA, trusting the cluster CA.
    fn node(&self, n: &str) -> TlsFiles {
        self.files("ca", Some(n), "ca", true)
    }
}

/// A client configuration built by hand (bypassing the load-time checks, e.g. to
/// present an expired certificate).
fn raw_client(pki: &Pki, node: &str) -> ClientTls {
    let dir = pki.dir.path("ca");
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(dir.join(format!("{node}.pem")))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join(format!("{node}-key.pem"))).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(load_roots(&dir.join("ca.pem")).unwrap())
    .with_client_auth_cert(certs, key)
    .unwrap();
    cfg.alpn_protocols = vec![hasync::channel::tls::ALPN.to_vec()];
    ClientTls {
        config: Arc::new(cfg),
        server_name: None,
    }
}

fn synthetic(i: u32) -> Entry {
    let v6 = i % 7 == 3;
    let (src, dst): (IpAddr, IpAddr) = if v6 {
        (
            std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, (i >> 16) as u16, i as u16).into(),
            std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1).into(),
        )
    } else {
        (
            std::net::Ipv4Addr::from(0x0a00_0000 | (i & 0x00ff_ffff)).into(),
            std::net::Ipv4Addr::new(192, 0, 2, 9).into(),
        )
    };
    let p = if i.is_multiple_of(2) {
        proto::TCP
    } else {
        proto::UDP
    };
    let orig = Tuple::new(p, src, 1024 + (i % 60000) as u16, dst, 443);
    let mut reply = orig.swapped();
    if i.is_multiple_of(5) {
        reply.dst[..4].copy_from_slice(&[198, 51, 100, 1]);
    }
    Entry {
        orig,
        reply,
        status: 0x18e,
        timeout: 100 + i % 1000,
        mark: i % 3,
        zone: if i.is_multiple_of(11) {
            Zone::new(7)
        } else {
            Zone::DEFAULT
        },
        proto: if p == proto::TCP {
            ProtoInfo::Tcp {
                state: 3,
                wscale: [7, 7],
                flags: [0x23, 0x23],
            }
        } else {
            ProtoInfo::None
        },
        labels: None,
    }
}

/// Captured log output of the current thread (the tests run on a current-thread
/// runtime, so the server's tasks log here too).
///
/// One global subscriber writes to the capture of the thread that logs: with a
/// per-thread `set_default` subscriber, a log call first reached from a test thread
/// without one could have its interest cached as "never" and lose the line here.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

thread_local! {
    static CAPTURE: std::cell::RefCell<Option<Logs>> = const { std::cell::RefCell::new(None) };
}

/// Writes to the current thread's capture (if any) and to stderr.
struct ThreadWriter;

impl std::io::Write for ThreadWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|c| {
            if let Some(logs) = c.borrow().as_ref()
                && let Ok(mut v) = logs.0.lock()
            {
                v.extend_from_slice(b);
            }
        });
        std::io::stderr().write_all(b)?;
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Stops capturing on drop.
struct CaptureGuard;

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        CAPTURE.with(|c| c.borrow_mut().take());
    }
}

impl Logs {
    fn install(&self) -> CaptureGuard {
        static GLOBAL: std::sync::Once = std::sync::Once::new();
        GLOBAL.call_once(|| {
            let sub = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_max_level(tracing::Level::INFO)
                .with_writer(|| ThreadWriter)
                .finish();
            let _ = tracing::subscriber::set_global_default(sub);
        });
        CAPTURE.with(|c| *c.borrow_mut() = Some(self.clone()));
        CaptureGuard
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn opts() -> ChannelOptions {
    ChannelOptions {
        handshake_timeout: Duration::from_secs(5),
        io_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(10),
        dump_timeout: Duration::from_secs(10),
        ..ChannelOptions::default()
    }
}

/// A server on 127.0.0.1:<any> serving `table`; its address and counters.
async fn start<S, F>(
    tls: &TlsFiles,
    o: ChannelOptions,
    bind: IpAddr,
    table: S,
) -> (SocketAddr, Arc<ChannelStats>, tokio::task::JoinHandle<()>)
where
    S: Fn(PeerInfo) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Vec<Entry>, String>> + Send,
{
    let server = ChannelServer::bind(SocketAddr::new(bind, 0), server_config(tls).unwrap(), 1, o)
        .await
        .unwrap();
    let addr = server.local_addr();
    let stats = server.stats();
    let task = tokio::spawn(server.run(Arc::new(table)));
    (addr, stats, task)
}

fn fixed(n: u32) -> impl Fn(PeerInfo) -> std::future::Ready<Result<Vec<Entry>, String>> {
    let table: Arc<Vec<Entry>> = Arc::new((0..n).map(synthetic).collect());
    move |_| std::future::ready(Ok(table.as_ref().clone()))
}

/// Waits until `f` holds (the server counts in its own tasks).
async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn mutual_tls_resync_of_100k_entries() {
    let pki = Pki::new("resync");
    let want: Vec<Entry> = (0..100_000).map(synthetic).collect();
    let (addr, stats, task) = start(&pki.node("node-a"), opts(), LOOPBACK, fixed(100_000)).await;
    let client_stats = Arc::new(ChannelStats::default());
    let copts = ChannelOptions {
        stats: client_stats.clone(),
        ..opts()
    };
    let tls = client_config(&pki.node("node-b")).unwrap();
    let mut c = ChannelClient::connect(addr, &tls, 2, copts).await.unwrap();
    assert_eq!(c.remote_node(), 1);
    assert_eq!(c.remote_subject(), Some("CN=node-a"));
    c.ping().await.unwrap();

    let started = Instant::now();
    let mut got = Vec::with_capacity(want.len());
    let summary = c.resync_with(|batch| got.extend(batch)).await.unwrap();
    let elapsed = started.elapsed();
    println!(
        "resync of {} entries over mutual TLS on loopback: {elapsed:?} ({} batches, {:.0} entries/s)",
        summary.entries,
        summary.batches,
        summary.entries as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(summary.entries, 100_000);
    assert!(summary.batches > 1);
    assert_eq!(got, want, "every entry arrives, in order, unchanged");

    // The connection stays usable: a second resync with the pull API.
    let mut r = c.resync().await.unwrap();
    let mut n = 0;
    while let Some(b) = r.next_batch().await.unwrap() {
        n += b.len();
    }
    assert_eq!((n, r.total()), (100_000, Some(100_000)));
    c.close().await;

    eventually("two resyncs served", || {
        stats.snapshot().resyncs_served == 2
    })
    .await;
    let s = stats.snapshot();
    assert_eq!(s.entries_sent, 200_000);
    assert_eq!(s.refused_total(), 0);
    assert_eq!(s.frame_errors_total(), 0);
    assert_eq!(s.handshakes, 1);
    let cs = client_stats.snapshot();
    assert_eq!((cs.resyncs_received, cs.entries_received), (2, 200_000));
    task.abort();
}

#[tokio::test]
async fn a_dns_name_and_non_mutual_tls_work_too() {
    let pki = Pki::new("dns");
    // Server without client authentication; a client without a certificate.
    let server_files = pki.files("ca", Some("node-a"), "ca", false);
    let (addr, stats, task) = start(&server_files, opts(), LOOPBACK, fixed(10)).await;
    let anon = client_config(&pki.files("ca", None, "ca", false)).unwrap();
    let mut c = ChannelClient::connect(addr, &anon, 2, opts())
        .await
        .unwrap();
    assert_eq!(c.resync_with(|_| {}).await.unwrap().entries, 10);
    // Verifying the DNS SAN instead of the address.
    let named = anon.clone().with_server_name("node-a.ha.example").unwrap();
    let mut c = ChannelClient::connect(addr, &named, 2, opts())
        .await
        .unwrap();
    c.ping().await.unwrap();
    // ... and a name the certificate does not carry.
    let wrong = anon.with_server_name("node-z.ha.example").unwrap();
    let e = ChannelClient::connect(addr, &wrong, 2, opts())
        .await
        .err()
        .unwrap();
    assert!(
        matches!(
            e,
            ChannelError::Handshake {
                reason: Refusal::BadCert,
                ..
            }
        ),
        "{e}"
    );
    eventually("refusal counted", || {
        stats.snapshot().refused(Refusal::PeerRefused) == 1
    })
    .await;
    task.abort();
}

fn refused_as(e: &ChannelError, want: Refusal) -> bool {
    matches!(e, ChannelError::Handshake { reason, .. } if *reason == want)
}

#[tokio::test]
async fn refused_peers_are_counted_and_logged_and_others_still_served() {
    let logs = Logs::default();
    let _guard = logs.install();
    let pki = Pki::new("refuse");
    let (addr, stats, task) = start(&pki.node("node-a"), opts(), LOOPBACK, fixed(1000)).await;
    let connect =
        |tls: ClientTls| async move { ChannelClient::connect(addr, &tls, 2, opts()).await };

    // 1. No client certificate while tls_mutual = true.
    let anon = client_config(&pki.files("ca", None, "ca", false)).unwrap();
    let e = connect(anon).await.err().unwrap();
    println!("no certificate: {e}");
    assert!(refused_as(&e, Refusal::PeerRefused), "{e}");
    eventually("no_client_cert counted", || {
        stats.snapshot().refused(Refusal::NoClientCert) == 1
    })
    .await;

    // 2. A client certificate from another CA (the client trusts the server).
    let impostor = client_config(&pki.files("ca", Some("impostor"), "rogue", true)).unwrap();
    let e = connect(impostor).await.err().unwrap();
    println!("foreign client CA: {e}");
    assert!(refused_as(&e, Refusal::PeerRefused), "{e}");
    eventually("unknown_ca counted", || {
        stats.snapshot().refused(Refusal::UnknownCa) == 1
    })
    .await;

    // 3. An expired client certificate (rejected at load time, so presented by hand).
    let err = client_config(&pki.node("expired")).unwrap_err();
    assert!(matches!(err, TlsError::Expired { .. }), "{err}");
    assert!(err.to_string().contains("expired.pem"), "{err}");
    let e = connect(raw_client(&pki, "expired")).await.err().unwrap();
    println!("expired client certificate: {e}");
    assert!(refused_as(&e, Refusal::PeerRefused), "{e}");
    eventually("expired counted", || {
        stats.snapshot().refused(Refusal::Expired) == 1
    })
    .await;

    // 4. A server certificate from another CA: the client refuses the server.
    let rogue_dir = Dir::new("rogue-server");
    let rogue_server = pki.files("rogue", Some("impostor"), "rogue", true);
    let (rogue_addr, rogue_stats, rogue_task) =
        start(&rogue_server, opts(), LOOPBACK, fixed(1)).await;
    let client_stats = Arc::new(ChannelStats::default());
    let e = ChannelClient::connect(
        rogue_addr,
        &client_config(&pki.node("node-b")).unwrap(),
        2,
        ChannelOptions {
            stats: client_stats.clone(),
            ..opts()
        },
    )
    .await
    .err()
    .unwrap();
    println!("foreign server CA: {e}");
    assert!(refused_as(&e, Refusal::UnknownCa), "{e}");
    assert_eq!(client_stats.snapshot().refused(Refusal::UnknownCa), 1);
    eventually("the rogue server saw the refusal", || {
        rogue_stats.snapshot().refused(Refusal::PeerRefused) == 1
    })
    .await;
    rogue_task.abort();
    drop(rogue_dir);

    // 5. Plaintext instead of TLS.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut sink)).await;
    eventually("protocol counted", || {
        stats.snapshot().refused(Refusal::Protocol) == 1
    })
    .await;

    // 6. A client-only certificate is fine as a client; a good node is still served.
    let co = client_config(&pki.node("client-only")).unwrap();
    let mut c = ChannelClient::connect(addr, &co, 3, opts()).await.unwrap();
    assert_eq!(c.resync_with(|_| {}).await.unwrap().entries, 1000);
    let good = client_config(&pki.node("node-b")).unwrap();
    let mut c = ChannelClient::connect(addr, &good, 2, opts())
        .await
        .unwrap();
    assert_eq!(c.resync_with(|_| {}).await.unwrap().entries, 1000);

    let s = stats.snapshot();
    assert_eq!(s.refused_total(), 4, "{s:?}");
    assert_eq!(s.resyncs_served, 2);
    let text = logs.text();
    for reason in ["no_client_cert", "unknown_ca", "expired", "protocol"] {
        let line = text
            .lines()
            .find(|l| {
                l.contains("TLS handshake refused") && l.contains(&format!("reason=\"{reason}\""))
            })
            .unwrap_or_else(|| panic!("no log line for {reason}:\n{text}"));
        assert!(line.contains("peer=127.0.0.1:"), "{line}");
    }
    task.abort();
}

#[tokio::test]
async fn the_server_certificate_must_name_the_dialled_address() {
    let pki = Pki::new("addr");
    // node-b's certificate names 127.0.0.2; the client dials 127.0.0.1.
    let (addr, _stats, task) = start(&pki.node("node-b"), opts(), LOOPBACK, fixed(1)).await;
    let tls = client_config(&pki.node("node-a")).unwrap();
    let e = ChannelClient::connect(addr, &tls, 2, opts())
        .await
        .err()
        .unwrap();
    assert!(refused_as(&e, Refusal::BadCert), "{e}");
    task.abort();
}

/// A TLS-authenticated raw connection, for speaking malformed frames.
async fn raw_tls(addr: SocketAddr, tls: &ClientTls) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::IpAddress(addr.ip().into());
    tokio_rustls::TlsConnector::from(tls.config.clone())
        .connect(name, tcp)
        .await
        .unwrap()
}

fn hello(node: u32) -> Vec<u8> {
    let mut v = Vec::new();
    Message::Hello(Hello {
        max_version: 1,
        node,
    })
    .encode(&mut v)
    .unwrap();
    v
}

/// Everything the peer sends until it closes.
async fn drain(s: &mut tokio_rustls::client::TlsStream<TcpStream>) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    out
}

/// The messages in `bytes` (well-formed frames only).
fn messages(mut bytes: &[u8]) -> Vec<Message> {
    let mut out = Vec::new();
    while let Ok(Some((f, n))) = frame::decode(bytes) {
        out.push(Message::decode(&f).unwrap());
        bytes = &bytes[n..];
    }
    out
}

#[tokio::test]
async fn malformed_frames_close_only_that_connection() {
    let logs = Logs::default();
    let _guard = logs.install();
    let pki = Pki::new("frames");
    let (addr, stats, task) = start(&pki.node("node-a"), opts(), LOOPBACK, fixed(100)).await;
    let tls = client_config(&pki.node("node-b")).unwrap();

    // A good client stays connected across all of it.
    let mut good = ChannelClient::connect(addr, &tls, 2, opts()).await.unwrap();

    let mut oversized = frame::header(FrameType::Entries, 0).unwrap().to_vec();
    oversized[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
    let mut version = hello(5);
    version[4] = 9;
    let mut bad_entries = hello(5);
    // A well-framed ENTRIES whose one record is a delete: never part of a table.
    let mut rec = [0u8; 128];
    let n = record::encode_record(&Change::Delete(synthetic(1).key()), &mut rec).unwrap();
    let mut payload = vec![0, 0, 0, 1, 0, 0, 0, 1];
    payload.extend_from_slice(&rec[..n]);
    frame::encode(FrameType::Entries, &payload, &mut bad_entries).unwrap();
    let mut request_first = Vec::new();
    Message::ResyncRequest { request: 1 }
        .encode(&mut request_first)
        .unwrap();
    /// Bytes sent, whether the sender then closes, the error counted, the ERROR answered.
    type Case = (
        &'static str,
        Vec<u8>,
        bool,
        FrameErrorKind,
        Option<ErrorCode>,
    );
    let cases: Vec<Case> = vec![
        (
            "bad magic",
            b"NOT A FRAME AT ALL".to_vec(),
            false,
            FrameErrorKind::BadMagic,
            Some(ErrorCode::Protocol),
        ),
        (
            "oversized",
            oversized,
            false,
            FrameErrorKind::Oversized,
            Some(ErrorCode::Protocol),
        ),
        (
            "wrong version",
            version,
            false,
            FrameErrorKind::UnsupportedVersion,
            Some(ErrorCode::Version),
        ),
        (
            "truncated",
            hello(5)[..7].to_vec(),
            true,
            FrameErrorKind::Truncated,
            None,
        ),
        (
            "not HELLO first",
            request_first,
            false,
            FrameErrorKind::Unexpected,
            Some(ErrorCode::Protocol),
        ),
        (
            "forged ENTRIES",
            bad_entries,
            false,
            FrameErrorKind::Malformed,
            Some(ErrorCode::Protocol),
        ),
    ];
    for (name, bytes, then_close, kind, code) in cases {
        let before = stats.snapshot().frame_errors(kind);
        let mut s = raw_tls(addr, &tls).await;
        s.write_all(&bytes).await.unwrap();
        s.flush().await.unwrap();
        if then_close {
            s.shutdown().await.unwrap();
        }
        let answer = messages(&drain(&mut s).await);
        eventually(name, || stats.snapshot().frame_errors(kind) == before + 1).await;
        if let Some(code) = code {
            assert!(
                answer
                    .iter()
                    .any(|m| matches!(m, Message::Error { code: c, .. } if *c == code as u16)),
                "{name}: {answer:?}"
            );
        }
        // The good connection is unaffected.
        good.ping().await.unwrap();
    }
    assert_eq!(good.resync_with(|_| {}).await.unwrap().entries, 100);
    let s = stats.snapshot();
    assert_eq!(s.frame_errors_total(), 6, "{s:?}");
    assert_eq!(s.refused_total(), 0);
    assert!(
        logs.text().contains("closing the connection"),
        "{}",
        logs.text()
    );
    task.abort();
}

#[tokio::test]
async fn idle_silent_and_slow_peers_time_out() {
    let pki = Pki::new("timeouts");
    let o = ChannelOptions {
        handshake_timeout: Duration::from_millis(300),
        io_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_millis(300),
        ..opts()
    };
    // Large enough to overflow the loopback socket buffers of a peer that never reads.
    let (addr, stats, task) = start(&pki.node("node-a"), o.clone(), LOOPBACK, fixed(400_000)).await;
    let tls = client_config(&pki.node("node-b")).unwrap();

    // Connects but never starts TLS.
    let _silent = TcpStream::connect(addr).await.unwrap();
    eventually("handshake timeout", || {
        stats.snapshot().refused(Refusal::Timeout) == 1
    })
    .await;

    // Says HELLO, then nothing.
    let mut idle = raw_tls(addr, &tls).await;
    idle.write_all(&hello(5)).await.unwrap();
    idle.flush().await.unwrap();
    eventually("idle timeout", || stats.snapshot().timeouts == 1).await;

    // Asks for the table and never reads it.
    let mut slow = raw_tls(addr, &tls).await;
    slow.write_all(&hello(5)).await.unwrap();
    let mut req = Vec::new();
    Message::ResyncRequest { request: 7 }
        .encode(&mut req)
        .unwrap();
    slow.write_all(&req).await.unwrap();
    slow.flush().await.unwrap();
    eventually("slow reader cut off", || {
        let s = stats.snapshot();
        s.timeouts == 2 && s.resync_failures == 1
    })
    .await;
    drop(slow);

    // Still serving.
    let mut c = ChannelClient::connect(addr, &tls, 2, o).await.unwrap();
    assert_eq!(c.resync_with(|_| {}).await.unwrap().entries, 400_000);
    task.abort();
}

#[tokio::test]
async fn a_failed_dump_is_reported_to_the_replica() {
    let pki = Pki::new("dump");
    let failing = |_: PeerInfo| async { Err::<Vec<Entry>, _>("netlink: ENOBUFS".to_string()) };
    let (addr, stats, task) = start(&pki.node("node-a"), opts(), LOOPBACK, failing).await;
    let tls = client_config(&pki.node("node-b")).unwrap();
    let mut c = ChannelClient::connect(addr, &tls, 2, opts()).await.unwrap();
    let e = c.resync_with(|_| {}).await.unwrap_err();
    assert!(
        matches!(&e, ChannelError::Remote { code, text, .. }
            if *code == ErrorCode::Unavailable as u16 && text.contains("ENOBUFS")),
        "{e}"
    );
    assert!(!c.is_usable());
    eventually("failure counted", || stats.snapshot().resync_failures == 1).await;
    task.abort();
}

#[tokio::test]
async fn connections_beyond_the_limits_are_closed() {
    let pki = Pki::new("limit");
    let o = ChannelOptions {
        max_connections: 1,
        max_handshakes_per_ip: 2,
        ..opts()
    };
    let (addr, stats, task) = start(&pki.node("node-a"), o, LOOPBACK, fixed(1)).await;
    let tls = client_config(&pki.node("node-b")).unwrap();
    let mut first = ChannelClient::connect(addr, &tls, 2, opts()).await.unwrap();
    let e = ChannelClient::connect(addr, &tls, 3, opts())
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&e, ChannelError::Remote { code, .. } if *code == ErrorCode::Busy as u16),
        "{e}"
    );
    eventually("over limit counted", || stats.snapshot().over_limit == 1).await;
    first.ping().await.unwrap();
    first.close().await;
    eventually("slot freed", || stats.snapshot().active == 0).await;
    let mut again = ChannelClient::connect(addr, &tls, 3, opts()).await.unwrap();
    again.ping().await.unwrap();
    drop(again);
    eventually("slot freed", || stats.snapshot().active == 0).await;

    // Two silent connections from 127.0.0.1 hold its handshake slots: a third from
    // there is closed at once, a client from 127.0.0.2 still gets through.
    let _a = TcpStream::connect(addr).await.unwrap();
    let _b = TcpStream::connect(addr).await.unwrap();
    eventually("two handshakes pending", || {
        stats.snapshot().connections == 5
    })
    .await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await;
    assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "closed at once: {n:?}");
    eventually("per-address limit", || stats.snapshot().over_limit == 2).await;
    let other = tokio::net::TcpSocket::new_v4().unwrap();
    other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let tcp = other.connect(addr).await.unwrap();
    let mut s = tokio_rustls::TlsConnector::from(tls.config.clone())
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .unwrap();
    s.write_all(&hello(9)).await.unwrap();
    s.flush().await.unwrap();
    let mut h = [0u8; frame::HEADER_LEN + 5];
    s.read_exact(&mut h).await.unwrap();
    assert!(matches!(Message::decode_frame(&h), Ok(Message::Hello(_))));
    task.abort();
}

fn write(path: &Path, text: &str) {
    std::fs::File::create(path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

#[test]
fn tls_files_are_checked_with_clear_errors() {
    let pki = Pki::new("files");
    let dir = pki.dir.path("ca");
    let junk = pki.dir.path("junk.pem");
    write(&junk, "hello\n");
    let mut f = pki.node("node-a");
    let check = |f: &TlsFiles, want: &[&str]| {
        let e = server_config(f).expect_err("refused");
        let text = e.to_string();
        for w in want {
            assert!(text.contains(w), "{text:?} lacks {w:?}");
        }
    };
    f.cert = Some(pki.dir.path("missing.pem"));
    check(&f, &["`tls_cert`", "missing.pem", "cannot be read"]);
    f.cert = Some(junk.clone());
    check(&f, &["`tls_cert`", "junk.pem", "not a PEM file"]);
    f.cert = Some(dir.join("node-a-key.pem"));
    check(&f, &["no CERTIFICATE", "found PRIVATE KEY"]);
    f = pki.node("node-a");
    f.key = Some(dir.join("node-a.pem"));
    check(&f, &["`tls_key`", "no private key", "found CERTIFICATE"]);
    f.key = Some(dir.join("node-b-key.pem"));
    check(
        &f,
        &[
            "node-b-key.pem",
            "does not belong to the certificate",
            "node-a.pem",
        ],
    );
    f = pki.node("expired");
    check(
        &f,
        &["`tls_cert`", "expired.pem", "CN=expired", "expired on"],
    );
    f = pki.node("node-a");
    f.ca = Some(junk);
    check(&f, &["`tls_ca`", "not a PEM file"]);
    f.ca = None;
    check(&f, &["requires `tls_ca`"]);
    // A client needs the CA to verify the primary.
    let e = client_config(&TlsFiles::default()).unwrap_err();
    assert!(e.to_string().contains("needs `tls_ca`"), "{e}");
    // The good ones load.
    server_config(&pki.node("node-a")).unwrap();
    client_config(&pki.node("node-b")).unwrap();
}

#[test]
fn the_cert_command_prints_what_it_wrote_and_the_config() {
    let d = Dir::new("cli");
    let bin = env!("CARGO_BIN_EXE_hasync");
    let ca = d.path("ca");
    let run = |args: &[&str]| std::process::Command::new(bin).args(args).output().unwrap();
    let out = run(&[
        "cert",
        "init",
        "--dir",
        ca.to_str().unwrap(),
        "--name",
        "lab CA",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(
        text.contains("ca.pem") && text.contains("ca-key.pem"),
        "{text}"
    );
    let out = run(&[
        "cert",
        "issue",
        "--dir",
        ca.to_str().unwrap(),
        "--name",
        "node-b",
        "--ip",
        "10.250.0.2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(text.contains("IP:10.250.0.2"), "{text}");
    assert!(text.contains("tls_cert   = \""), "{text}");
    assert!(text.contains("node-b-key.pem\""), "{text}");
    // Refuses to overwrite.
    let out = run(&["cert", "init", "--dir", ca.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to overwrite"));
}
