//! Loads and attaches a BPF_PROG_TYPE_NETFILTER program. aya 0.14 has no such program
//! type, so:
//! 1. `aya::EbpfLoader` loads the object: it creates the maps and the `.rodata` globals
//!    (the netfilter function sits in a "classifier" section, which aya parses but we
//!    never ask it to load);
//! 2. `aya_obj` parses the same object again, and its relocations are pointed at aya's
//!    map fds;
//! 3. `BPF_PROG_LOAD` with `prog_type = NETFILTER`, `expected_attach_type = BPF_NETFILTER`;
//! 4. `BPF_LINK_CREATE` per (family, hook, priority), in the calling thread's network
//!    namespace (netfilter links are per namespace). Dropping the link fd detaches it.

use std::{
    collections::HashSet,
    ffi::CString,
    io,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
};

use aya::{Ebpf, maps::Map};
use aya_obj::generated::{bpf_attach_type, bpf_attr, bpf_cmd, bpf_prog_type};

pub const NFPROTO_IPV4: u32 = 2;
pub const NFPROTO_IPV6: u32 = 10;
pub const NF_INET_LOCAL_IN: u32 = 1;
pub const NF_INET_FORWARD: u32 = 2;
pub const NF_INET_POST_ROUTING: u32 = 4;
/// Just before conntrack confirms (`NF_IP_PRI_CONNTRACK_CONFIRM` = INT_MAX), after NAT
/// and the filter chains. INT_MAX-1 is taken on IPv6 (the kernel answers EBUSY).
pub const DEFAULT_PRIORITY: i32 = i32::MAX - 2;

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("parsing the eBPF object: {0}")]
    Parse(String),
    #[error("the eBPF object has no map `{0}` loaded by aya")]
    MissingMap(String),
    #[error("the eBPF object has no program `{0}`")]
    MissingProgram(String),
    #[error("relocating the eBPF program: {0}")]
    Relocate(String),
    #[error(
        "the kernel refused the netfilter program ({source}){hint}\nverifier log (tail):\n{log}"
    )]
    Verifier {
        source: io::Error,
        hint: &'static str,
        log: String,
    },
    #[error(
        "attaching the netfilter program (family {pf}, hook {hook}, priority {priority}): {source}{hint}"
    )]
    Link {
        pf: u32,
        hook: u32,
        priority: i32,
        source: io::Error,
        hint: &'static str,
    },
}

fn map_fd(m: &Map) -> Option<RawFd> {
    let data = match m {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuHashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::RingBuf(d)
        | Map::LpmTrie(d) => d,
        _ => return None,
    };
    Some(data.fd().as_fd().as_raw_fd())
}

/// `bpf(2)`.
///
/// # Safety
/// `attr` must be valid for `cmd`; pointers inside it must outlive the call.
unsafe fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<RawFd> {
    // SAFETY: upheld by the caller.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            size_of::<bpf_attr>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as RawFd)
    }
}

fn privilege_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            " (hasync needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON: run it as root)"
        }
        _ => "",
    }
}

/// Loads program `name` of `elf` as BPF_PROG_TYPE_NETFILTER, using the maps `ebpf`
/// created from the same object. Returns the program fd.
pub fn load_netfilter(ebpf: &Ebpf, elf: &[u8], name: &str) -> Result<OwnedFd, LoaderError> {
    let mut obj = aya_obj::Object::parse(elf).map_err(|e| LoaderError::Parse(e.to_string()))?;
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
    let obj_maps = obj.maps.clone();
    let mut fds = Vec::with_capacity(obj_maps.len());
    for (map_name, map) in &obj_maps {
        let loaded = ebpf
            .map(map_name)
            .ok_or_else(|| LoaderError::MissingMap(map_name.clone()))?;
        let fd = map_fd(loaded).ok_or_else(|| LoaderError::MissingMap(map_name.clone()))?;
        fds.push((map_name.as_str(), fd, map));
    }
    obj.relocate_maps(fds.into_iter(), &text_sections)
        .map_err(|e| LoaderError::Relocate(e.to_string()))?;
    obj.relocate_calls(&text_sections)
        .map_err(|e| LoaderError::Relocate(e.to_string()))?;
    let program = obj
        .programs
        .get(name)
        .ok_or_else(|| LoaderError::MissingProgram(name.into()))?;
    let function = obj
        .functions
        .get(&program.function_key())
        .ok_or_else(|| LoaderError::MissingProgram(name.into()))?;
    let insns = &function.instructions;
    let license = CString::new("Dual MIT/GPL").map_err(|e| LoaderError::Parse(e.to_string()))?;

    let attempt = |log: Option<&mut Vec<u8>>| -> io::Result<OwnedFd> {
        // SAFETY: bpf_attr is a plain C union; all-zero is its documented initial state.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: we only use the BPF_PROG_LOAD member of the union.
        let load = unsafe { &mut attr.__bindgen_anon_3 };
        load.prog_type = bpf_prog_type::BPF_PROG_TYPE_NETFILTER as u32;
        load.expected_attach_type = bpf_attach_type::BPF_NETFILTER as u32;
        load.insn_cnt = insns.len() as u32;
        load.insns = insns.as_ptr() as u64;
        load.license = license.as_ptr() as u64;
        for (slot, b) in load.prog_name.iter_mut().zip(name.bytes().take(15)) {
            *slot = b as _;
        }
        if let Some(buf) = log {
            load.log_level = 1;
            load.log_size = buf.len() as u32;
            load.log_buf = buf.as_mut_ptr() as u64;
        }
        // SAFETY: attr is a valid BPF_PROG_LOAD request; insns/license/log outlive the call.
        let fd = unsafe { sys_bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr) }?;
        // SAFETY: the kernel returned a new fd that we now own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    match attempt(None) {
        Ok(fd) => Ok(fd),
        Err(source) => {
            // Load again with the verifier log, only to explain the failure.
            let mut log = vec![0u8; 4 << 20];
            let _ = attempt(Some(&mut log));
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let tail: Vec<&str> = text.lines().rev().take(25).collect();
            let log = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
            Err(LoaderError::Verifier {
                hint: privilege_hint(&source),
                source,
                log,
            })
        }
    }
}

/// Attaches `prog` at one netfilter hook of the calling thread's network namespace.
/// The returned link fd keeps it attached.
pub fn attach_netfilter(
    prog: &OwnedFd,
    pf: u32,
    hook: u32,
    priority: i32,
) -> Result<OwnedFd, LoaderError> {
    // SAFETY: all-zero is the initial state of the union.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: we only use the BPF_LINK_CREATE member.
    let link = unsafe { &mut attr.link_create };
    link.__bindgen_anon_1.prog_fd = prog.as_raw_fd() as u32;
    link.attach_type = bpf_attach_type::BPF_NETFILTER as u32;
    // SAFETY: the netfilter member matches attach_type BPF_NETFILTER.
    let nf = unsafe { &mut link.__bindgen_anon_3.netfilter };
    nf.pf = pf;
    nf.hooknum = hook;
    nf.priority = priority;
    nf.flags = 0;
    // SAFETY: valid BPF_LINK_CREATE request.
    match unsafe { sys_bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr) } {
        // SAFETY: the kernel returned a new fd that we now own.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
        Err(source) => {
            let hint = match source.raw_os_error() {
                Some(libc::EBUSY) => " (another program already uses this priority at this hook)",
                Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) => {
                    " (the kernel needs CONFIG_NETFILTER_BPF_LINK, >= 6.4)"
                }
                _ => privilege_hint(&source),
            };
            Err(LoaderError::Link {
                pf,
                hook,
                priority,
                source,
                hint,
            })
        }
    }
}
