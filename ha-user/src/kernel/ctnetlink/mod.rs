//! ctnetlink: conntrack entries in and out of the kernel table.
