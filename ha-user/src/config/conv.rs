//! Value converters: `(attribute name, expression) -> value or Problem`, one per kind of
//! attribute value, each with the error message and hint for a wrong value.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use hcl_edit::Span as _;
use hcl_edit::expr::Expression as E;
use ipnet::IpNet;

use super::error::{Found, Problem, suggest};
use super::schema::{self, PortRange};

type Conv<T> = Result<T, Problem>;

/// Hint for a quoted value where a bare one is expected.
fn unquote_hint(e: &E, looks_right: impl Fn(&str) -> bool) -> Option<String> {
    match e {
        E::String(s) if looks_right(s.value().trim()) => Some("remove the quotes".into()),
        _ => None,
    }
}

pub fn string(n: &str, e: &E) -> Conv<String> {
    match e {
        E::String(s) => Ok(s.value().clone()),
        _ => Err(
            Problem::new(format!("`{n}` must be a string, found {}", Found(e))).maybe_hint(
                matches!(e, E::Number(_) | E::Bool(_) | E::Variable(_)).then(|| {
                    format!(
                        "put it in double quotes: {n} = \"{}\"",
                        e.to_string().trim()
                    )
                }),
            ),
        ),
    }
}

pub fn boolean(n: &str, e: &E) -> Conv<bool> {
    match e {
        E::Bool(b) => Ok(*b.value()),
        _ => Err(
            Problem::new(format!("`{n}` must be true or false, found {}", Found(e)))
                .maybe_hint(unquote_hint(e, |s| s == "true" || s == "false")),
        ),
    }
}

/// A whole number in `min..=max`.
pub fn uint(n: &str, e: &E, min: u64, max: u64) -> Conv<u64> {
    let expected = format!("`{n}` must be a number between {min} and {max}");
    match e {
        E::Number(num) => {
            let num = num.value();
            match num.as_u64() {
                Some(v) if (min..=max).contains(&v) => Ok(v),
                _ if num.is_f64() => Err(Problem::new(format!(
                    "`{n}` must be a whole number between {min} and {max}, found {num}"
                ))),
                _ => Err(Problem::new(format!("{expected}, found {num}"))),
            }
        }
        _ => Err(Problem::new(format!("{expected}, found {}", Found(e)))
            .maybe_hint(unquote_hint(e, |s| s.parse::<f64>().is_ok()))),
    }
}

pub fn port(n: &str, e: &E) -> Conv<u16> {
    uint(n, e, 1, 65_535).map(|v| u16::try_from(v).unwrap_or(u16::MAX))
}

/// A power of two in `min..=max`.
pub fn pow2(n: &str, e: &E, min: u64, max: u64) -> Conv<u64> {
    let expected = format!("`{n}` must be a power of two between {min} and {max}");
    match e {
        E::Number(num) => match num.value().as_u64() {
            Some(v) if (min..=max).contains(&v) && v.is_power_of_two() => Ok(v),
            Some(v) if (min..=max).contains(&v) => {
                let up = v.next_power_of_two();
                let down = up / 2;
                let near = if v - down <= up - v && down >= min {
                    down
                } else {
                    up
                };
                Err(Problem::new(format!("{expected}, found {v}"))
                    .hint(format!("the nearest power of two is {near}")))
            }
            _ => Err(Problem::new(format!("{expected}, found {}", num.value()))),
        },
        _ => Err(Problem::new(format!("{expected}, found {}", Found(e)))
            .maybe_hint(unquote_hint(e, |s| s.parse::<u64>().is_ok()))),
    }
}

/// Seconds, fractions allowed: `0 < v <= max`, or `0 <= v <= max` with `zero_ok`.
pub fn seconds(n: &str, e: &E, zero_ok: bool, max: f64) -> Conv<Duration> {
    let expected = if zero_ok {
        format!("`{n}` must be a number of seconds between 0 and {max}")
    } else {
        format!("`{n}` must be a number of seconds greater than 0 and at most {max}")
    };
    match e {
        E::Number(num) => {
            let v = num.value().as_f64().unwrap_or(f64::NAN);
            let ok = v.is_finite() && v <= max && (v > 0.0 || (zero_ok && v == 0.0));
            match Duration::try_from_secs_f64(v) {
                Ok(d) if ok => Ok(d),
                _ => Err(Problem::new(format!("{expected}, found {}", num.value()))),
            }
        }
        _ => Err(
            Problem::new(format!("{expected}, found {}", Found(e))).maybe_hint(
                unquote_hint(e, |s| s.parse::<f64>().is_ok()).or_else(|| match e {
                    E::String(s) if s.value().ends_with('s') || s.value().ends_with("ms") => {
                        Some("write a plain number of seconds, e.g. 0.5 for 500 ms".into())
                    }
                    _ => None,
                }),
            ),
        ),
    }
}

/// One of a fixed set of strings.
pub fn one_of<T: Copy>(n: &str, e: &E, values: &[(&str, T)], aliases: &[(&str, &str)]) -> Conv<T> {
    let list = values
        .iter()
        .map(|(s, _)| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let expected = format!("`{n}` must be one of {list}");
    let E::String(s) = e else {
        return Err(Problem::new(format!("{expected}, found {}", Found(e))));
    };
    let s = s.value().as_str();
    if let Some((_, v)) = values.iter().find(|(name, _)| *name == s) {
        return Ok(*v);
    }
    let lower = s.to_ascii_lowercase();
    let hint = if values.iter().any(|(name, _)| *name == lower) {
        Some(format!("values are lower case: \"{lower}\""))
    } else if let Some((_, to)) = aliases.iter().find(|(from, _)| *from == lower) {
        Some(format!("did you mean \"{to}\"?"))
    } else {
        suggest(s, values.iter().map(|(name, _)| *name)).map(|m| format!("did you mean \"{m}\"?"))
    };
    Err(Problem::new(format!("{expected}, found {s:?}")).maybe_hint(hint))
}

fn str_of<'e>(n: &str, e: &'e E, what: &str) -> Conv<&'e str> {
    match e {
        E::String(s) => Ok(s.value().as_str()),
        _ => Err(
            Problem::new(format!("`{n}` must be {what}, found {}", Found(e))).maybe_hint(
                matches!(e, E::Number(_) | E::Variable(_)).then(|| {
                    format!(
                        "put it in double quotes: {n} = \"{}\"",
                        e.to_string().trim()
                    )
                }),
            ),
        ),
    }
}

fn looks_like_host_name(s: &str) -> bool {
    s.chars().any(|c| c.is_ascii_alphabetic())
        && !s.contains(':')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
}

pub fn ip(n: &str, e: &E) -> Conv<IpAddr> {
    let s = str_of(n, e, "an IP address")?;
    if let Ok(ip) = s.trim().parse::<IpAddr>() {
        return Ok(ip);
    }
    let hint = if let Ok(net) = s.parse::<IpNet>() {
        Some(format!(
            "write the address without prefix length, \"{}\"; the sync subnet goes in `conntrack_sync.local_addr`",
            net.addr()
        ))
    } else if s.parse::<SocketAddr>().is_ok() {
        Some("write the address without a port".into())
    } else if looks_like_host_name(s) {
        Some("host names are not resolved: failover must not depend on DNS".into())
    } else {
        None
    };
    Err(Problem::new(format!("`{n}` must be an IP address, found {s:?}")).maybe_hint(hint))
}

/// An address with prefix length, e.g. a VIP. The hint shows the schema's example.
pub fn cidr(n: &str, e: &E, block: &str) -> Conv<IpNet> {
    let example = schema::attrs_of(block)
        .find(|a| a.name == n)
        .map_or("\"192.168.1.1/24\"", |a| a.example);
    let leaf = schema::leaf(block);
    let s = str_of(
        n,
        e,
        &format!("an address with prefix length (e.g. {example})"),
    )?;
    s.trim().parse::<IpNet>().map_err(|_| {
        Problem::new(format!("`{n}` = {s:?} in {leaf} is not a CIDR"))
            .hint(format!("expected e.g. {example}"))
    })
}

/// A network, or a bare address meaning one host.
pub fn net_or_host(n: &str, e: &E) -> Conv<IpNet> {
    let s = str_of(n, e, "an address or network")?.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(Problem::new(format!(
        "`{n}` must be an IP address or a network in CIDR notation, found {s:?}"
    ))
    .hint("expected e.g. \"10.1.0.0/16\", \"2001:db8::/32\" or \"10.1.2.3\""))
}

/// "ip:port", "[v6]:port", ":port", "ip" (default port) or "" (= `None`).
pub fn socket(n: &str, e: &E, default_port: u16) -> Conv<Option<SocketAddr>> {
    let raw = str_of(n, e, "an address \"ip:port\"")?;
    let s = raw.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let parsed = if let Some(port) = s.strip_prefix(':') {
        port.parse::<u16>()
            .ok()
            .map(|p| SocketAddr::from((Ipv4Addr::UNSPECIFIED, p)))
    } else if let Ok(sa) = s.parse::<SocketAddr>() {
        Some(sa)
    } else {
        let bare = s
            .strip_prefix('[')
            .and_then(|x| x.strip_suffix(']'))
            .unwrap_or(s);
        bare.parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, default_port))
    };
    match parsed {
        Some(sa) if sa.port() != 0 => Ok(Some(sa)),
        Some(_) => Err(Problem::new(format!("`{n}` has port 0, found {raw:?}"))
            .hint("use a port between 1 and 65535")),
        None => {
            let hint = if looks_like_host_name(s.rsplit_once(':').map_or(s, |(h, _)| h)) {
                "host names are not resolved: failover must not depend on DNS".to_string()
            } else {
                format!(
                    "expected e.g. \"10.0.0.1:{default_port}\", \":{default_port}\" or \"[2001:db8::1]:{default_port}\""
                )
            };
            Err(Problem::new(format!(
                "`{n}` must be an address \"ip:port\", \":port\" or \"ip\", found {raw:?}"
            ))
            .hint(hint))
        }
    }
}

pub fn multicast(n: &str, e: &E) -> Conv<Option<Ipv4Addr>> {
    let s = str_of(n, e, "an IPv4 multicast address or \"\"")?.trim();
    if s.is_empty() {
        return Ok(None);
    }
    match s.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) if v4.is_multicast() => Ok(Some(v4)),
        Ok(IpAddr::V6(_)) => Err(Problem::new(format!(
            "`{n}` = {s:?} is an IPv6 group; only IPv4 multicast groups are supported"
        ))
        .hint("on an IPv6 sync link use multicast_group = \"\" to send unicast to peer_addr")),
        _ => Err(Problem::new(format!(
            "`{n}` must be an IPv4 multicast address in 224.0.0.0/4 or \"\", found {s:?}"
        ))
        .hint("\"\" sends unicast to peer_addr; the default group is \"225.0.0.50\"")),
    }
}

pub fn secret(n: &str, e: &E) -> Conv<String> {
    let s = str_of(n, e, "a string")?;
    let len = s.chars().count();
    if len < 8 {
        return Err(Problem::new(format!(
            "`{n}` must be at least 8 characters long, found {len}"
        ))
        .hint("use a long random string, e.g. from `openssl rand -base64 32`"));
    }
    Ok(s.to_string())
}

pub fn abs_path(n: &str, e: &E) -> Conv<PathBuf> {
    let s = str_of(n, e, "an absolute path")?;
    if !s.starts_with('/') {
        return Err(
            Problem::new(format!("`{n}` must be an absolute path, found {s:?}"))
                .hint("relative paths would depend on the service's working directory"),
        );
    }
    Ok(PathBuf::from(s))
}

/// Absolute path that fits `sockaddr_un.sun_path` (108 bytes with the NUL).
pub fn socket_path(n: &str, e: &E) -> Conv<PathBuf> {
    let p = abs_path(n, e)?;
    let len = p.as_os_str().len();
    if len > 107 {
        return Err(Problem::new(format!(
            "`{n}` must be at most 107 bytes long (a Unix socket path limit), found {len}"
        )));
    }
    Ok(p)
}

/// A Linux interface name, as `dev_valid_name()` accepts it.
pub fn iface(n: &str, e: &E) -> Conv<String> {
    let s = str_of(n, e, "an interface name")?;
    let valid = !s.is_empty()
        && s.len() < 16
        && s != "."
        && s != ".."
        && !s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace());
    if valid {
        return Ok(s.to_string());
    }
    let hint = if s.contains(':') {
        Some("the part after ':' is an address label; put the whole name in `label`".into())
    } else if s.len() >= 16 {
        Some("Linux interface names have at most 15 characters".into())
    } else {
        None
    };
    Err(Problem::new(format!(
        "`{n}` must be an interface name of 1 to 15 characters without '/', ':' or spaces, found {s:?}"
    ))
    .maybe_hint(hint))
}

pub fn iface_list(n: &str, e: &E) -> Conv<Vec<String>> {
    let E::Array(arr) = e else {
        let hint = matches!(e, E::String(_))
            .then(|| format!("write a list: {n} = [{}]", e.to_string().trim()));
        return Err(Problem::new(format!(
            "`{n}` must be a list of interface names, found {}",
            Found(e)
        ))
        .maybe_hint(hint));
    };
    let mut out: Vec<String> = Vec::with_capacity(arr.len());
    for item in arr.iter() {
        let name = iface(n, item).map_err(|p| p.at(item.span()))?;
        if out.contains(&name) {
            return Err(Problem::new(format!("`{n}` lists {name:?} twice")).at(item.span()));
        }
        out.push(name);
    }
    Ok(out)
}

pub fn mac(n: &str, e: &E) -> Conv<Option<[u8; 6]>> {
    let s = str_of(n, e, "a MAC address")?.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let parts: Vec<&str> = s.split([':', '-']).collect();
    let mut mac = [0u8; 6];
    let ok = parts.len() == 6
        && parts
            .iter()
            .zip(mac.iter_mut())
            .all(|(p, b)| p.len() == 2 && u8::from_str_radix(p, 16).map(|v| *b = v).is_ok());
    if !ok {
        return Err(Problem::new(format!(
            "`{n}` must be a MAC address like \"02:00:5e:00:00:01\", found {s:?}"
        )));
    }
    if mac[0] & 1 == 1 {
        return Err(Problem::new(format!(
            "`{n}` = {s:?} is a multicast MAC; a virtual MAC must be unicast"
        ))
        .hint("the lowest bit of the first octet must be 0, e.g. \"02:...\""));
    }
    if mac == [0; 6] {
        return Err(Problem::new(format!("`{n}` must not be the all-zero MAC")));
    }
    Ok(Some(mac))
}

const PROTOCOLS: &[(&str, u8)] = &[
    ("icmp", 1),
    ("tcp", 6),
    ("udp", 17),
    ("gre", 47),
    ("esp", 50),
    ("ah", 51),
    ("icmpv6", 58),
    ("ipv6-icmp", 58),
    ("dccp", 33),
    ("sctp", 132),
    ("udplite", 136),
];

/// Protocols whose connections have ports.
pub const PORT_PROTOCOLS: &[u8] = &[6, 17, 33, 132, 136];

pub fn protocol(n: &str, e: &E) -> Conv<u8> {
    let expected = format!("`{n}` must be a protocol name or a number between 0 and 255");
    let names = || {
        let v: Vec<&str> = PROTOCOLS.iter().map(|(name, _)| *name).collect();
        format!("known names: {}", v.join(", "))
    };
    match e {
        E::Number(num) => num
            .value()
            .as_u64()
            .and_then(|v| u8::try_from(v).ok())
            .ok_or_else(|| Problem::new(format!("{expected}, found {}", num.value()))),
        E::String(s) => {
            let s = s.value().trim().to_ascii_lowercase();
            if let Some((_, p)) = PROTOCOLS.iter().find(|(name, _)| *name == s) {
                return Ok(*p);
            }
            if let Ok(v) = s.parse::<u8>() {
                return Ok(v);
            }
            let hint = suggest(&s, PROTOCOLS.iter().map(|(name, _)| *name))
                .map_or_else(names, |m| format!("did you mean \"{m}\"?"));
            Err(Problem::new(format!("{expected}, found {s:?}")).hint(hint))
        }
        _ => Err(Problem::new(format!("{expected}, found {}", Found(e))).hint(names())),
    }
}

pub fn port_range(n: &str, e: &E) -> Conv<PortRange> {
    let expected = format!("`{n}` must be a port or a range \"low-high\" of ports 0 to 65535");
    let one = |s: &str| s.trim().parse::<u16>().ok();
    let range = match e {
        E::Number(num) => num
            .value()
            .as_u64()
            .and_then(|v| u16::try_from(v).ok())
            .map(|p| (p, p)),
        E::String(s) => {
            let s = s.value();
            match s.split_once('-') {
                Some((a, b)) => one(a).zip(one(b)),
                None => one(s).map(|p| (p, p)),
            }
        }
        _ => return Err(Problem::new(format!("{expected}, found {}", Found(e)))),
    };
    match range {
        Some((start, end)) if start <= end => Ok(PortRange { start, end }),
        Some((start, end)) => Err(Problem::new(format!(
            "`{n}` range \"{start}-{end}\" is reversed"
        ))
        .hint(format!("write the low port first: \"{end}-{start}\""))),
        None => Err(Problem::new(format!(
            "{expected}, found {}",
            match e {
                E::String(s) => format!("{:?}", s.value()),
                _ => e.to_string().trim().to_string(),
            }
        ))),
    }
}
