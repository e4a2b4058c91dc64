//! Reads a namespace's conntrack table with the `conntrack` tool (conntrack-tools), an
//! independent view of the kernel table to compare hasync's work against.

use crate::{NetNs, Result};

/// One entry of `conntrack -L -o extended`, normalised for comparison between nodes:
/// the timeout and the per-node reference count (`use=`) are removed; tuples, state,
/// flags (`[ASSURED]`, `[UNREPLIED]`), `mark=`, `zone=`, `labels=` stay. Equality and
/// order look at the normalised line only (timeouts drift by the second between
/// nodes; compare them separately).
#[derive(Clone, Debug)]
pub struct CtLine {
    /// The normalised line.
    pub line: String,
    /// Seconds left, as printed.
    pub timeout: u32,
}

impl PartialEq for CtLine {
    fn eq(&self, other: &Self) -> bool {
        self.line == other.line
    }
}

impl Eq for CtLine {}

impl PartialOrd for CtLine {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for CtLine {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.line.cmp(&other.line)
    }
}

impl std::hash::Hash for CtLine {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.line.hash(state)
    }
}

impl CtLine {
    pub fn parse(raw: &str) -> Option<CtLine> {
        let fields: Vec<&str> = raw.split_whitespace().collect();
        // ipv4 2 tcp 6 <timeout> ...
        if fields.len() < 6 || !matches!(fields[0], "ipv4" | "ipv6") {
            return None;
        }
        let timeout = fields[4].parse().ok()?;
        let kept: Vec<&str> = fields
            .iter()
            .enumerate()
            // `id=` stays: it is the ICMP id (we never ask for `-o id`).
            .filter(|(i, f)| *i != 4 && !f.starts_with("use="))
            .map(|(_, f)| *f)
            .collect();
        Some(CtLine {
            line: kept.join(" "),
            timeout,
        })
    }

    /// The line contains `needle` (e.g. `"dport=53"`).
    pub fn has(&self, needle: &str) -> bool {
        self.line.split_whitespace().any(|f| f == needle) || self.line.contains(needle)
    }
}

/// All IPv4 and IPv6 entries of the namespace's table, sorted.
pub fn conntrack_list(ns: &NetNs) -> Result<Vec<CtLine>> {
    let mut out = Vec::new();
    for family in ["ipv4", "ipv6"] {
        let o = ns.exec("conntrack", ["-L", "-f", family, "-o", "extended,labels"])?;
        out.extend(
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(CtLine::parse),
        );
    }
    out.sort();
    Ok(out)
}

/// Number of entries in the namespace's table (both families).
pub fn conntrack_count(ns: &NetNs) -> Result<usize> {
    let o = ns.exec("conntrack", ["-C"])?;
    String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .map_err(|e| crate::Error(format!("conntrack -C: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_extended_output() {
        let raw = "ipv4     2 tcp      6 99 ESTABLISHED src=10.0.0.1 dst=10.0.0.2 sport=1000 \
                   dport=80 src=10.0.0.2 dst=10.9.9.9 sport=80 dport=1000 [ASSURED] mark=5 \
                   zone=7 use=1";
        let l = CtLine::parse(raw).unwrap();
        assert_eq!(l.timeout, 99);
        assert_eq!(
            l.line,
            "ipv4 2 tcp 6 ESTABLISHED src=10.0.0.1 dst=10.0.0.2 sport=1000 dport=80 \
             src=10.0.0.2 dst=10.9.9.9 sport=80 dport=1000 [ASSURED] mark=5 zone=7"
        );
        assert!(l.has("zone=7"));
    }

    #[test]
    fn ignores_summary_lines() {
        assert!(CtLine::parse("conntrack v1.4.7 (conntrack-tools): 3 flow entries").is_none());
    }
}
