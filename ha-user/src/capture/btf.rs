//! Kernel struct offsets from the running kernel's BTF.
//!
//! There is no CO-RE from Rust eBPF, so the agent reads `/sys/kernel/btf/vmlinux` at
//! load time and hands the offsets to the program as the `LAYOUT` global. One object
//! then runs on every kernel (>= 6.4, the first with netfilter BPF links) that has the
//! fields; a kernel without a required field is refused with a message naming it.

use std::path::{Path, PathBuf};

use btf_rs::{Btf, Type};
use ha_common::{ABSENT, CT_COPY_MAX, KernelLayout};

/// Where the running kernel publishes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "reading kernel BTF from {path}: {reason} (hasync needs a kernel built with CONFIG_DEBUG_INFO_BTF)"
    )]
    Read { path: PathBuf, reason: String },
    #[error(
        "the running kernel has no `{path}` (looked up in its BTF); hasync needs it to read \
         conntrack entries: a kernel >= 6.4 with CONFIG_NF_CONNTRACK and CONFIG_NETFILTER_BPF_LINK"
    )]
    Missing { path: String },
    #[error("kernel layout not supported: {0}")]
    Unsupported(String),
}

/// The offsets the program needs. Required fields fail the load; optional ones
/// (mark, zone, labels, protocol state) are [`ABSENT`] and reported by [`Layout::missing`].
#[derive(Debug, Clone)]
pub struct Layout {
    pub kernel: KernelLayout,
    /// Optional fields this kernel lacks (e.g. `nf_conn.mark` without CONFIG_NF_CONNTRACK_MARK).
    pub missing: Vec<String>,
}

/// Reads the layout from the running kernel.
pub fn kernel_layout() -> Result<Layout, LayoutError> {
    layout_from(Path::new(VMLINUX_BTF))
}

/// Reads the layout from a BTF file.
pub fn layout_from(path: &Path) -> Result<Layout, LayoutError> {
    let btf = Btf::from_file(path).map_err(|e| LayoutError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Resolver {
        btf: &btf,
        missing: Vec::new(),
    }
    .layout()
}

struct Resolver<'a> {
    btf: &'a Btf,
    missing: Vec<String>,
}

/// A resolved member: byte offset from the start of the outer struct, byte size, type.
struct Found {
    offset: u32,
    size: u32,
}

impl Resolver<'_> {
    fn layout(mut self) -> Result<Layout, LayoutError> {
        let ct_size = self.struct_size("nf_conn")?;
        if ct_size > CT_COPY_MAX {
            return Err(LayoutError::Unsupported(format!(
                "struct nf_conn is {ct_size} bytes; the program copies at most {CT_COPY_MAX}"
            )));
        }
        self.check_tuple()?;
        let proto = self.optional("nf_conn", "proto");
        let in_proto = |r: &mut Self, path: &str| {
            if proto == ABSENT {
                ABSENT
            } else {
                r.optional("nf_conntrack_proto", path)
            }
        };
        let tcp_state = in_proto(&mut self, "tcp.state");
        let tcp_scale = [
            in_proto(&mut self, "tcp.seen[0].td_scale"),
            in_proto(&mut self, "tcp.seen[1].td_scale"),
        ];
        let tcp_flags = [
            in_proto(&mut self, "tcp.seen[0].flags"),
            in_proto(&mut self, "tcp.seen[1].flags"),
        ];
        let sctp_state = in_proto(&mut self, "sctp.state");
        let sctp_vtag = [
            in_proto(&mut self, "sctp.vtag[0]"),
            in_proto(&mut self, "sctp.vtag[1]"),
        ];
        let dccp_state = in_proto(&mut self, "dccp.state");
        let ct_zone = self.optional("nf_conn", "zone");
        if ct_zone != ABSENT {
            self.expect_offsets("nf_conntrack_zone", &[("id", 0), ("flags", 2), ("dir", 3)])?;
        }
        let kernel = KernelLayout {
            state_hook: self.required("nf_hook_state", "hook", 1)?,
            state_in: self.required("nf_hook_state", "in", 8)?,
            state_out: self.required("nf_hook_state", "out", 8)?,
            dev_ifindex: self.required("net_device", "ifindex", 4)?,
            skb_nfct: self.required("sk_buff", "_nfct", 8)?,
            skb_iif: self.required("sk_buff", "skb_iif", 4)?,
            ct_size,
            ct_status: self.required("nf_conn", "status", 4)?,
            ct_timeout: self.required("nf_conn", "timeout", 4)?,
            ct_tuple_orig: self.required("nf_conn", "tuplehash[0].tuple", 4)?,
            ct_tuple_reply: self.required("nf_conn", "tuplehash[1].tuple", 4)?,
            ct_mark: self.optional("nf_conn", "mark"),
            ct_zone,
            ct_ext: self.optional("nf_conn", "ext"),
            ct_proto: proto,
            tcp_state,
            tcp_scale,
            tcp_flags,
            sctp_state,
            sctp_vtag,
            dccp_state,
            ext_labels_slot: self.ext_labels_slot(),
            labels_bits: self.optional("nf_conn_labels", "bits"),
            ready: 1,
        };
        Ok(Layout {
            kernel,
            missing: self.missing,
        })
    }

    /// `struct nf_conntrack_tuple` must be the 40-byte layout `ha_common::CtTuple` mirrors.
    fn check_tuple(&mut self) -> Result<(), LayoutError> {
        let size = self.struct_size("nf_conntrack_tuple")?;
        if size != 40 {
            return Err(LayoutError::Unsupported(format!(
                "struct nf_conntrack_tuple is {size} bytes, expected 40"
            )));
        }
        self.expect_offsets(
            "nf_conntrack_tuple",
            &[
                ("src.u3", 0),
                ("src.u", 16),
                ("src.l3num", 18),
                ("dst.u3", 20),
                ("dst.u", 36),
                ("dst.protonum", 38),
                ("dst.dir", 39),
            ],
        )
    }

    fn expect_offsets(&mut self, strukt: &str, want: &[(&str, u32)]) -> Result<(), LayoutError> {
        for (path, offset) in want {
            let found = self.find(strukt, path)?;
            if found.offset != *offset {
                return Err(LayoutError::Unsupported(format!(
                    "{strukt}.{path} is at byte {}, expected {offset}",
                    found.offset
                )));
            }
        }
        Ok(())
    }

    /// Offset of a field the program cannot work without; must be aligned to `align`.
    fn required(&mut self, strukt: &str, path: &str, align: u32) -> Result<u32, LayoutError> {
        let found = self.find(strukt, path)?;
        if found.offset % align != 0 {
            return Err(LayoutError::Unsupported(format!(
                "{strukt}.{path} at byte {} is not {align}-byte aligned",
                found.offset
            )));
        }
        Ok(found.offset)
    }

    /// Offset of a field the program can do without ([`ABSENT`] if missing or misaligned).
    fn optional(&mut self, strukt: &str, path: &str) -> u32 {
        match self.find(strukt, path) {
            Ok(f) if f.size == 0 || f.offset % f.size.min(8) == 0 => f.offset,
            _ => {
                self.missing.push(format!("{strukt}.{path}"));
                ABSENT
            }
        }
    }

    /// `offsetof(struct nf_ct_ext, offset) + NF_CT_EXT_LABELS`.
    fn ext_labels_slot(&mut self) -> u32 {
        let base = self.optional("nf_ct_ext", "offset");
        match (base, self.enum_value("nf_ct_ext_id", "NF_CT_EXT_LABELS")) {
            (ABSENT, _) => ABSENT,
            (b, Some(id)) => b + id,
            (_, None) => {
                self.missing
                    .push("enum nf_ct_ext_id.NF_CT_EXT_LABELS".into());
                ABSENT
            }
        }
    }

    fn enum_value(&self, enum_name: &str, member: &str) -> Option<u32> {
        let types = self.btf.resolve_types_by_name(enum_name).ok()?;
        types.iter().find_map(|t| match t {
            Type::Enum(e) => e
                .members
                .iter()
                .find_map(|m| (self.btf.resolve_name(m).ok()? == member).then(|| m.val())),
            _ => None,
        })
    }

    fn struct_size(&self, name: &str) -> Result<u32, LayoutError> {
        let missing = || LayoutError::Missing {
            path: format!("struct {name}"),
        };
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|_| missing())?;
        types
            .iter()
            .find_map(|t| match t {
                Type::Struct(s) | Type::Union(s) => Some(s.size() as u32),
                _ => None,
            })
            .ok_or_else(missing)
    }

    /// Resolves `a.b[1].c` inside `struct strukt`, descending through anonymous
    /// members, typedefs and qualifiers.
    fn find(&self, strukt: &str, path: &str) -> Result<Found, LayoutError> {
        let missing = || LayoutError::Missing {
            path: format!("{strukt}.{path}"),
        };
        let types = self
            .btf
            .resolve_types_by_name(strukt)
            .map_err(|_| missing())?;
        let mut ty = types
            .into_iter()
            .find(|t| matches!(t, Type::Struct(_) | Type::Union(_)))
            .ok_or_else(missing)?;
        let mut offset = 0u32;
        let mut size = 0u32;
        for step in path.split('.') {
            let (name, index) = match step.split_once('[') {
                Some((n, rest)) => {
                    let idx: u32 = rest.trim_end_matches(']').parse().map_err(|_| missing())?;
                    (n, Some(idx))
                }
                None => (step, None),
            };
            let (member_off, member_ty) = self.member(&ty, name).ok_or_else(missing)?;
            offset += member_off;
            ty = self.strip(member_ty).ok_or_else(missing)?;
            if let Some(idx) = index {
                let Type::Array(arr) = &ty else {
                    return Err(missing());
                };
                if idx >= arr.len() as u32 {
                    return Err(missing());
                }
                let elem = self.btf.resolve_chained_type(arr).map_err(|_| missing())?;
                let elem = self.strip(elem).ok_or_else(missing)?;
                let elem_size = self.size_of(&elem).ok_or_else(missing)?;
                offset += idx * elem_size;
                ty = elem;
            }
            size = self.size_of(&ty).unwrap_or(0);
        }
        Ok(Found { offset, size })
    }

    /// Byte offset and type of member `name` of a struct/union, searching anonymous
    /// members recursively.
    fn member(&self, ty: &Type, name: &str) -> Option<(u32, Type)> {
        let (Type::Struct(s) | Type::Union(s)) = ty else {
            return None;
        };
        for m in &s.members {
            let member_name = self.btf.resolve_name(m).unwrap_or_default();
            let mty = self.btf.resolve_chained_type(m).ok()?;
            if member_name == name {
                return Some((m.bit_offset() / 8, mty));
            }
            if member_name.is_empty() {
                let inner = self.strip(mty)?;
                if let Some((off, t)) = self.member(&inner, name) {
                    return Some((m.bit_offset() / 8 + off, t));
                }
            }
        }
        None
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn strip(&self, mut ty: Type) -> Option<Type> {
        for _ in 0..16 {
            ty = match &ty {
                Type::Typedef(t) => self.btf.resolve_chained_type(t).ok()?,
                Type::Volatile(t) | Type::Const(t) | Type::Restrict(t) => {
                    self.btf.resolve_chained_type(t).ok()?
                }
                Type::TypeTag(t) => self.btf.resolve_chained_type(t).ok()?,
                _ => return Some(ty),
            };
        }
        None
    }

    fn size_of(&self, ty: &Type) -> Option<u32> {
        Some(match ty {
            Type::Int(i) => i.size() as u32,
            Type::Struct(s) | Type::Union(s) => s.size() as u32,
            Type::Enum(e) => e.size() as u32,
            Type::Enum64(e) => e.size() as u32,
            Type::Ptr(_) => 8,
            Type::Array(a) => {
                let elem = self.strip(self.btf.resolve_chained_type(a).ok()?)?;
                self.size_of(&elem)? * a.len() as u32
            }
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running() -> Layout {
        kernel_layout().expect("this machine has BTF and conntrack")
    }

    #[test]
    fn running_kernel_has_every_field() {
        let l = running();
        // DCCP left the kernel in 6.16; everything else must be there on this machine.
        assert!(
            l.missing.iter().all(|m| m.contains("dccp")),
            "{:?}",
            l.missing
        );
        let k = l.kernel;
        assert_eq!(k.ready, 1);
        assert!(k.ct_size > 100 && k.ct_size <= CT_COPY_MAX, "{k:?}");
        // Each tuple is a nf_conntrack_tuple_hash {hlist_nulls_node (16 bytes); tuple}.
        assert_eq!(k.ct_tuple_reply - k.ct_tuple_orig, 56, "{k:?}");
        for off in [
            k.ct_status,
            k.ct_timeout,
            k.ct_mark,
            k.ct_zone,
            k.ct_ext,
            k.ct_proto,
        ] {
            assert!(off < k.ct_size, "offset {off} outside nf_conn: {k:?}");
        }
        assert_ne!(k.tcp_scale[0], k.tcp_scale[1]);
        assert_ne!(k.ext_labels_slot, ABSENT);
    }

    #[test]
    fn descends_through_anonymous_members_and_arrays() {
        let btf = Btf::from_file(VMLINUX_BTF).unwrap();
        let r = Resolver {
            btf: &btf,
            missing: Vec::new(),
        };
        let seen0 = r.find("ip_ct_tcp", "seen[0]").unwrap();
        let seen1 = r.find("ip_ct_tcp", "seen[1]").unwrap();
        assert_eq!(seen1.offset - seen0.offset, seen0.size);
        // sk_buff._nfct sits inside anonymous unions/structs on current kernels.
        assert!(r.find("sk_buff", "_nfct").is_ok());
    }

    #[test]
    fn missing_fields_are_named() {
        let btf = Btf::from_file(VMLINUX_BTF).unwrap();
        let mut r = Resolver {
            btf: &btf,
            missing: Vec::new(),
        };
        let err = r.required("nf_conn", "no_such_field", 4).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the running kernel has no `nf_conn.no_such_field` (looked up in its BTF); hasync \
             needs it to read conntrack entries: a kernel >= 6.4 with CONFIG_NF_CONNTRACK and \
             CONFIG_NETFILTER_BPF_LINK"
        );
        assert_eq!(r.optional("nf_conn", "nope"), ABSENT);
        assert_eq!(r.missing, vec!["nf_conn.nope".to_string()]);
        assert!(matches!(
            r.struct_size("no_such_struct"),
            Err(LayoutError::Missing { .. })
        ));
    }

    #[test]
    fn unreadable_btf_is_a_clear_error() {
        let err = layout_from(Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/vmlinux"), "{err}");
        assert!(err.to_string().contains("CONFIG_DEBUG_INFO_BTF"), "{err}");
    }
}
