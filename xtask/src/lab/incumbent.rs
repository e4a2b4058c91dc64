//! The incumbent on the lab's failover run: conntrackd (FTFW over multicast on the
//! sync link, its shipped example's settings) driven by keepalived (VRRPv3 on the LAN
//! and WAN, one sync group, advertisements every 0.1 s: the same detection time as
//! hasync's lab heartbeat of 0.1 s × 3) with conntrackd's documented
//! `primary-backup.sh` actions as notify scripts. The bench compares its failover gap
//! with hasync's on the same topology, traffic and kill.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use testkit::{
    ProcessGuard,
    lab::{Firewall, LAN_VIP, Lab, LabOptions, SYNC_A, SYNC_B, WAN_VIP},
};

use super::{FailoverOutcome, LabArgs, Traffic};

/// conntrackd's `primary-backup.sh` (conntrack-tools' doc/sync), per node.
fn notify_script(conf: &Path, log: &Path) -> String {
    format!(
        "#!/bin/sh\n\
         # $1 = primary | backup | fault (from keepalived)\n\
         C=\"conntrackd -C {conf}\"\n\
         echo \"$(date +%s.%N) $1\" >> {log}\n\
         case \"$1\" in\n\
         primary) $C -c; $C -f; $C -R; $C -B ;;\n\
         backup) $C -n ;;\n\
         fault) $C -t ;;\n\
         esac\n\
         echo \"$(date +%s.%N) $1 done\" >> {log}\n",
        conf = conf.display(),
        log = log.display()
    )
}

fn conntrackd_config(own_ip: &str, dir: &Path, node: &str) -> String {
    format!(
        "Sync {{
\tMode FTFW {{
\t\tResendQueueSize 131072
\t}}
\tMulticast {{
\t\tIPv4_address 225.0.0.51
\t\tGroup 3781
\t\tIPv4_interface {own_ip}
\t\tInterface sync0
\t\tSndSocketBuffer 1249280
\t\tRcvSocketBuffer 1249280
\t\tChecksum on
\t}}
}}
General {{
\tSystemd no
\tHashSize 32768
\tHashLimit 131072
\tLogFile {dir}/conntrackd-{node}.log
\tLockFile {dir}/conntrackd-{node}.lock
\tUNIX {{
\t\tPath {dir}/conntrackd-{node}.ctl
\t}}
\tNetlinkBufferSize 2097152
\tNetlinkBufferSizeMaxGrowth 8388608
\tFilter From Userspace {{
\t\tAddress Ignore {{
\t\t\tIPv4_address 127.0.0.1
\t\t\tIPv6_address ::1
\t\t\tIPv4_address {SYNC_A}
\t\t\tIPv4_address {SYNC_B}
\t\t}}
\t}}
}}
",
        dir = dir.display()
    )
}

fn keepalived_config(node: &str, priority: u8, script: &Path) -> String {
    let s = script.display();
    format!(
        "global_defs {{
  router_id fw-{node}
  vrrp_version 3
  enable_script_security
  script_user root
}}
vrrp_sync_group G {{
  group {{
    LAN
    WAN
  }}
  notify_master \"{s} primary\"
  notify_backup \"{s} backup\"
  notify_fault \"{s} fault\"
}}
vrrp_instance LAN {{
  state BACKUP
  nopreempt
  interface lan0
  virtual_router_id 51
  priority {priority}
  advert_int 0.1
  virtual_ipaddress {{
    {LAN_VIP}/24 dev lan0
  }}
}}
vrrp_instance WAN {{
  state BACKUP
  nopreempt
  interface wan0
  virtual_router_id 52
  priority {priority}
  advert_int 0.1
  virtual_ipaddress {{
    {WAN_VIP}/24 dev wan0
  }}
}}
"
    )
}

struct Node {
    conntrackd: ProcessGuard,
    keepalived: ProcessGuard,
}

fn start(fw: &Firewall, node: &str, own_ip: &str, priority: u8, dir: &Path) -> Result<Node> {
    let ctd_conf = dir.join(format!("conntrackd-{node}.conf"));
    fs::write(&ctd_conf, conntrackd_config(own_ip, dir, node))?;
    let script = dir.join(format!("notify-{node}.sh"));
    fs::write(
        &script,
        notify_script(&ctd_conf, &dir.join(format!("notify-{node}.log"))),
    )?;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
    let mut cmd = fw.ns.command("conntrackd");
    cmd.arg("-C")
        .arg(&ctd_conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let conntrackd = ProcessGuard::spawn(cmd, "conntrackd").map_err(anyhow::Error::msg)?;
    // Ready once its control socket answers.
    let ctl = dir.join(format!("conntrackd-{node}.ctl"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ctl.exists() {
        if Instant::now() > deadline {
            bail!("conntrackd on fw-{node} did not start");
        }
        thread::sleep(Duration::from_millis(20));
    }
    let ka_conf = dir.join(format!("keepalived-{node}.conf"));
    fs::write(&ka_conf, keepalived_config(node, priority, &script))?;
    let mut cmd = fw.ns.command("keepalived");
    cmd.args(["--dont-fork", "--log-console", "--vrrp", "-f"])
        .arg(&ka_conf)
        .arg("-p")
        .arg(dir.join(format!("keepalived-{node}.pid")))
        .arg("-r")
        .arg(dir.join(format!("vrrp-{node}.pid")))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(
            dir.join(format!("keepalived-{node}.log")),
        )?);
    let keepalived = ProcessGuard::spawn(cmd, "keepalived").map_err(anyhow::Error::msg)?;
    Ok(Node {
        conntrackd,
        keepalived,
    })
}

fn holds_vip(fw: &Firewall) -> bool {
    fw.ns
        .ip(&["-4", "addr", "show", "dev", "lan0"])
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("{LAN_VIP}/24")))
        .unwrap_or(false)
}

fn need(prog: &str) -> Result<()> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {prog}")])
        .output()
        .context("running sh")?
        .status
        .success();
    if !found {
        bail!("{prog} is not installed (apt-get install -y {prog})");
    }
    Ok(())
}

/// The failover run with conntrackd + keepalived instead of hasync.
pub fn failover(args: &LabArgs) -> Result<FailoverOutcome> {
    need("conntrackd")?;
    need("keepalived")?;
    let dir = std::env::temp_dir().join(testkit::unique_name("hsinc"));
    fs::create_dir_all(&dir)?;
    let lab = Lab::new(&LabOptions {
        prefix: args.prefix.clone(),
        vips_on_a: false,
        ..Default::default()
    })
    .map_err(anyhow::Error::msg)?;
    let mut a = start(&lab.fw_a, "a", SYNC_A, 150, &dir)?;
    let b = start(&lab.fw_b, "b", SYNC_B, 100, &dir)?;
    testkit::wait_for(Duration::from_secs(10), "fw-a VRRP master", || {
        holds_vip(&lab.fw_a).then_some(())
    })
    .map_err(|e| {
        let log = fs::read_to_string(dir.join("keepalived-a.log")).unwrap_or_default();
        anyhow::anyhow!("{e}; fw-a's keepalived log:\n{log}")
    })?;
    // Let fw-a's notify script (commit, flush, resync, bulk) finish first.
    thread::sleep(Duration::from_millis(500));
    if holds_vip(&lab.fw_b) {
        let log = fs::read_to_string(dir.join("keepalived-b.log")).unwrap_or_default();
        bail!("fw-b holds the VIP too: it does not hear fw-a's VRRP advertisements\n{log}");
    }
    let traffic = Traffic::start(&lab, args.rate)?;
    let half = Duration::from_secs(args.duration.max(4)) / 2;
    thread::sleep(half);
    // keepalived's VRRP child resigns (sends priority 0) when its parent dies
    // gracefully: a crash kills both at once, so the peer has to time fw-a out.
    let vrrp_child = fs::read_to_string(dir.join("vrrp-a.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    let killed = Instant::now();
    if let Some(pid) = vrrp_child {
        // SAFETY: plain kill(2) of a process this run started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    for p in [&mut a.keepalived, &mut a.conntrackd] {
        p.signal(libc::SIGKILL);
        let _ = p.wait_timeout(Duration::from_secs(5));
    }
    for link in ["lan0", "wan0", "sync0"] {
        lab.fw_a
            .ns
            .ip(&["link", "set", link, "down"])
            .map_err(anyhow::Error::msg)?;
    }
    let took_over = testkit::wait_for(Duration::from_secs(10), "fw-b VRRP master", || {
        holds_vip(&lab.fw_b).then_some(())
    })
    .is_ok();
    let vip_moved_after = took_over.then(|| killed.elapsed());
    thread::sleep(half.saturating_sub(killed.elapsed()));
    traffic.stop();
    let (summary, survived, longest_pause) = traffic.stream_report(killed);
    drop(traffic);
    drop((a, b));
    drop(lab);
    let _ = fs::remove_dir_all(&dir);
    Ok(FailoverOutcome {
        took_over,
        survived,
        longest_pause,
        takeover_ms: None,
        vip_moved_after,
        summary,
    })
}
