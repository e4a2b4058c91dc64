//! DHCP renew after a virtual MAC moved (`virtual_mac { dhcp = true }`): the new MAC
//! needs its own lease. We only start a client; it runs in the background and its
//! outcome is logged, never fatal.

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("DHCP renew on {iface}: empty command")]
    EmptyCommand { iface: String },
    #[error("DHCP renew on {iface}: starting `{program}`: {source}")]
    Spawn {
        iface: String,
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// `program` in `$PATH` (or the usual sbin directories), if executable.
fn which(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The default: `dhclient -1 <iface>`, else `networkctl renew <iface>`.
fn default_command(iface: &str) -> Option<Vec<String>> {
    if let Some(p) = which("dhclient") {
        return Some(vec![p.display().to_string(), "-1".into(), iface.into()]);
    }
    which("networkctl").map(|p| vec![p.display().to_string(), "renew".into(), iface.into()])
}

/// Starts a DHCP renew on `iface` without waiting for it. `command` replaces the
/// default; `{iface}` in its arguments is replaced by the interface name (appended when
/// no argument contains it). Returns the client's pid, or `None` when no client was
/// found. The child inherits the calling thread's network namespace.
pub fn renew_dhcp(iface: &str, command: Option<&[String]>) -> Result<Option<u32>, DhcpError> {
    let argv = match command {
        Some(c) => {
            let mut argv: Vec<String> = c.iter().map(|a| a.replace("{iface}", iface)).collect();
            if !c.iter().any(|a| a.contains("{iface}")) {
                argv.push(iface.into());
            }
            argv
        }
        None => match default_command(iface) {
            Some(c) => c,
            None => {
                tracing::warn!(iface, "DHCP renew: no client found (dhclient, networkctl)");
                return Ok(None);
            }
        },
    };
    let Some((program, args)) = argv.split_first() else {
        return Err(DhcpError::EmptyCommand {
            iface: iface.into(),
        });
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| DhcpError::Spawn {
            iface: iface.into(),
            program: program.clone(),
            source,
        })?;
    let pid = child.id();
    tracing::info!(iface, pid, command = %argv.join(" "), "DHCP renew started");
    // Reaps the child and logs how it ended.
    let iface = iface.to_string();
    let spawned = std::thread::Builder::new()
        .name("dhcp-renew".into())
        .spawn(move || {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            match child.wait() {
                Ok(s) if s.success() => tracing::info!(iface, pid, "DHCP renew done"),
                Ok(s) => tracing::warn!(iface, pid, status = %s, stderr = %err.trim(), "DHCP renew failed"),
                Err(e) => tracing::warn!(iface, pid, error = %e, "DHCP renew: wait failed"),
            }
        });
    if let Err(e) = spawned {
        // The child runs on; only its exit status goes unlogged (and it stays a zombie).
        tracing::warn!(pid, error = %e, "DHCP renew: could not start the reaper thread");
    }
    Ok(Some(pid))
}
