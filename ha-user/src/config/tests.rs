//! Tests for the configuration module: examples, error messages, defaults, reference, fuzz.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::schema::{AttrDoc, BLOCKS, REFERENCE};
use super::*;

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn parse_ok(src: &str) -> Config {
    match parse(src, "t.hcl") {
        Ok(c) => c,
        Err(e) => panic!("unexpected errors:\n{e}\n--- in:\n{src}"),
    }
}

/// The issue's required example (node A).
const ISSUE_EXAMPLE: &str = r#"
replication {
  mode       = "primary"
  peer_addr  = "10.250.0.2"
  secret_key = "lab-secret-please-change"
  ha {
    enabled = true
    conntrack_sync {
      enabled         = true
      interface       = "sync0"
      multicast_group = "225.0.0.50"
      port            = 3780
    }
  }
}
"#;

#[test]
fn issue_example_parses() {
    let c = parse_ok(ISSUE_EXAMPLE);
    let r = &c.replication;
    assert_eq!(r.mode, Mode::Primary);
    assert_eq!(r.peer_addr, Some(IpAddr::from([10, 250, 0, 2])));
    assert_eq!(
        r.secret_key.as_ref().map(SecretKey::expose),
        Some("lab-secret-please-change")
    );
    assert!(r.ha.enabled);
    let s = &r.ha.conntrack_sync;
    assert!(s.enabled);
    assert_eq!(s.interface.as_deref(), Some("sync0"));
    assert_eq!(s.multicast_group, Some(Ipv4Addr::new(225, 0, 0, 50)));
    assert_eq!(s.port, 3780);
    // The secret never shows in Debug output.
    assert!(!format!("{c:?}").contains("lab-secret"));
}

#[test]
fn every_example_parses() {
    let mut seen = 0;
    let mut entries: Vec<_> = std::fs::read_dir(examples_dir())
        .expect("examples/ exists")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "hcl"))
        .collect();
    entries.sort();
    for path in entries {
        let src = std::fs::read_to_string(&path).expect("readable example");
        let name = path.display().to_string();
        if let Err(e) = parse(&src, &name) {
            panic!("{e}");
        }
        seen += 1;
    }
    assert!(seen >= 4, "expected at least 4 examples, found {seen}");
}

#[test]
fn example_pair_is_consistent() {
    let read = |n: &str| {
        let p = examples_dir().join(n);
        parse_ok(&std::fs::read_to_string(p).expect("example"))
    };
    let a = read("two-node-a.hcl");
    let b = read("two-node-b.hcl");
    assert_eq!(a.replication.mode, Mode::Primary);
    assert_eq!(b.replication.mode, Mode::Replica);
    assert_eq!(a.replication.secret_key, b.replication.secret_key);
    assert_eq!(a.replication.peer_addr, Some(IpAddr::from([10, 250, 0, 2])));
    assert_eq!(b.replication.peer_addr, Some(IpAddr::from([10, 250, 0, 1])));
    assert_eq!(a.replication.ha.virtual_ips, b.replication.ha.virtual_ips);
    let (sa, sb) = (
        &a.replication.ha.conntrack_sync,
        &b.replication.ha.conntrack_sync,
    );
    assert_eq!(sa.interface.as_deref(), Some("sync0"));
    assert_eq!((sa.multicast_group, sa.port), (sb.multicast_group, sb.port));
    assert!(a.replication.ha.priority < b.replication.ha.priority);

    let u = read("unicast.hcl");
    assert_eq!(u.replication.ha.conntrack_sync.multicast_group, None);
    assert_eq!(u.replication.ha.conntrack_sync.filters.len(), 3);
    assert!(u.replication.ha.conntrack_sync.filters[2].exclude);

    let t = read("tls-replication.hcl");
    assert_eq!(
        t.replication.primary_addr,
        Some(SocketAddr::from(([10, 250, 0, 1], 9000)))
    );
    assert_eq!(
        t.replication.listen_addr,
        Some(SocketAddr::from(([0, 0, 0, 0], 9000)))
    );
    assert!(t.replication.tls_mutual);
    assert_eq!(
        t.replication.ha.heartbeat_interval,
        Duration::from_millis(500)
    );
    // Its TLS files do not exist on a build machine: the file check says so.
    let errs = validate_files(&t).expect_err("TLS files are absent");
    assert!(
        errs.iter()
            .any(|e| e.message.contains("`tls_cert` file cannot be read"))
    );
}

/// Bad input -> the exact error output.
#[test]
fn error_messages() {
    let cases: &[(&str, &str)] = &[
        // 1. unknown attribute with suggestion
        (
            "replication {\n  ha {\n    conntrack_sync {\n      mulitcast_group = \"225.0.0.50\"\n    }\n  }\n}\n",
            "lab-a.hcl:4:7: error: unknown attribute `mulitcast_group` in block `conntrack_sync` (did you mean `multicast_group`?)",
        ),
        // 2. enum value
        (
            "replication {\n  mode       = \"master\"\n}\n",
            "lab-a.hcl:2:16: error: `mode` must be one of \"primary\", \"replica\", \"standalone\", found \"master\" (did you mean \"primary\"?)",
        ),
        // 3. out of range
        (
            "replication {\n  ha {\n    conntrack_sync {\n      port = 70000\n    }\n  }\n}\n",
            "lab-a.hcl:4:14: error: `port` must be a number between 1 and 65535, found 70000",
        ),
        // 4. not a CIDR
        (
            "replication {\n  ha {\n    virtual_ip {\n      address   = \"10.0.0.1\"\n      interface = \"eth1\"\n    }\n  }\n}\n",
            "lab-a.hcl:4:19: error: `address` = \"10.0.0.1\" in virtual_ip is not a CIDR (expected e.g. \"192.168.1.1/24\")",
        ),
        // 5. string where a number is expected
        (
            "replication {\n  ha {\n    heartbeat_port = \"9002\"\n  }\n}\n",
            "lab-a.hcl:3:22: error: `heartbeat_port` must be a number between 1 and 65535, found string \"9002\" (remove the quotes)",
        ),
        // 6. bool
        (
            "replication {\n  tls_mutual = \"yes\"\n}\n",
            "lab-a.hcl:2:16: error: `tls_mutual` must be true or false, found string \"yes\"",
        ),
        // 7. unknown block with suggestion
        (
            "replication {\n  ha {\n    virtual_ips {\n    }\n  }\n}\n",
            "lab-a.hcl:3:5: error: unknown block `virtual_ips` in block `ha` (did you mean `virtual_ip`?)",
        ),
        // 8. attribute in the wrong block
        (
            "mode = \"primary\"\n",
            "lab-a.hcl:1:1: error: unknown attribute `mode` at top level (`mode` belongs in block `replication`)",
        ),
        // 9. duplicate attribute
        (
            "replication {\n  mode = \"primary\"\n  mode = \"replica\"\n}\n",
            "lab-a.hcl:3:3: error: duplicate attribute `mode` in block `replication` (first set at 2:3; remove one)",
        ),
        // 10. duplicate block
        (
            "replication {\n  ha {\n  }\n  ha {\n  }\n}\n",
            "lab-a.hcl:4:3: error: duplicate block `ha` in block `replication` (first at 2:3; merge them)",
        ),
        // 11. missing required attribute
        (
            "replication {\n  ha {\n    virtual_ip {\n      address = \"192.168.1.1/24\"\n    }\n  }\n}\n",
            "lab-a.hcl:3:5: error: block `virtual_ip` is missing required attribute `interface` (e.g. interface = \"eth1\")",
        ),
        // 12. missing required attribute, virtual_mac
        (
            "replication {\n  ha {\n    virtual_mac {\n      dhcp = true\n    }\n  }\n}\n",
            "lab-a.hcl:3:5: error: block `virtual_mac` is missing required attribute `interface` (e.g. interface = \"eth0\")",
        ),
        // 13. syntax error
        (
            "replication {\n  mode: \"primary\"\n}\n",
            "lab-a.hcl:2:7: error: syntax error: invalid structure; expected `{`, `=`, `\"` or identifier (attributes are written `name = value`)",
        ),
        // 14. secret_key required
        (
            "replication {\n  mode      = \"primary\"\n  peer_addr = \"10.250.0.2\"\n  ha {\n    enabled = true\n  }\n}\n",
            "lab-a.hcl:5:15: error: `secret_key` is required because HA is enabled: heartbeats and sync messages are always authenticated (set `secret_key` in block `replication`: at least 8 characters, the same on both nodes)",
        ),
        // 15. secret_key too short
        (
            "replication {\n  secret_key = \"short\"\n}\n",
            "lab-a.hcl:2:16: error: `secret_key` must be at least 8 characters long, found 5 (use a long random string, e.g. from `openssl rand -base64 32`)",
        ),
        // 16. peer_addr required by HA
        (
            "replication {\n  mode       = \"primary\"\n  secret_key = \"lab-secret\"\n  ha {\n    enabled = true\n  }\n}\n",
            "lab-a.hcl:5:15: error: `peer_addr` is required when HA is enabled: heartbeats are sent to the peer (set `peer_addr` in block `replication`, e.g. peer_addr = \"10.250.0.2\")",
        ),
        // 17. peer_addr outside local_addr's subnet (seed 001)
        (
            "replication {\n  mode       = \"primary\"\n  peer_addr  = \"10.9.0.2\"\n  secret_key = \"lab-secret\"\n  ha {\n    conntrack_sync {\n      enabled    = true\n      interface  = \"sync0\"\n      local_addr = \"10.250.0.1/24\"\n    }\n  }\n}\n",
            "lab-a.hcl:3:16: error: `peer_addr` 10.9.0.2 is not in the sync subnet 10.250.0.0/24 of `local_addr` 10.250.0.1/24 (both nodes' sync addresses must be on one subnet)",
        ),
        // 18. unicast sync needs peer_addr
        (
            "replication {\n  mode       = \"replica\"\n  secret_key = \"lab-secret\"\n  ha {\n    conntrack_sync {\n      enabled         = true\n      multicast_group = \"\"\n    }\n  }\n}\n",
            "lab-a.hcl:7:25: error: unicast sync (`multicast_group` = \"\") needs `peer_addr` in block `replication`",
        ),
        // 19. tls_cert without tls_key
        (
            "replication {\n  mode        = \"primary\"\n  listen_addr = \":9000\"\n  tls_cert    = \"/etc/hasync/node.pem\"\n}\n",
            "lab-a.hcl:4:17: error: `tls_cert` is set but `tls_key` is not (set both or neither)",
        ),
        // 20. tls_mutual without tls_ca
        (
            "replication {\n  mode        = \"primary\"\n  listen_addr = \":9000\"\n  tls_cert    = \"/etc/hasync/node.pem\"\n  tls_key     = \"/etc/hasync/node.key\"\n  tls_mutual  = true\n}\n",
            "lab-a.hcl:6:17: error: `tls_mutual` = true requires `tls_ca` to verify the peer's certificate",
        ),
        // 21. multicast group that is not multicast
        (
            "replication {\n  ha {\n    conntrack_sync {\n      multicast_group = \"10.0.0.1\"\n    }\n  }\n}\n",
            "lab-a.hcl:4:25: error: `multicast_group` must be an IPv4 multicast address in 224.0.0.0/4 or \"\", found \"10.0.0.1\" (\"\" sends unicast to peer_addr; the default group is \"225.0.0.50\")",
        ),
        // 22. IPv6 multicast group
        (
            "replication {\n  ha {\n    conntrack_sync {\n      multicast_group = \"ff02::1:5\"\n    }\n  }\n}\n",
            "lab-a.hcl:4:25: error: `multicast_group` = \"ff02::1:5\" is an IPv6 group; only IPv4 multicast groups are supported (on an IPv6 sync link use multicast_group = \"\" to send unicast to peer_addr)",
        ),
        // 23. ring buffer not a power of two
        (
            "replication {\n  ha {\n    conntrack_sync {\n      ring_buffer_size = 1000000\n    }\n  }\n}\n",
            "lab-a.hcl:4:26: error: `ring_buffer_size` must be a power of two between 4096 and 1073741824, found 1000000 (the nearest power of two is 1048576)",
        ),
        // 24. heartbeat interval zero
        (
            "replication {\n  ha {\n    heartbeat_interval = 0\n  }\n}\n",
            "lab-a.hcl:3:26: error: `heartbeat_interval` must be a number of seconds greater than 0 and at most 60, found 0",
        ),
        // 25. detection time too short
        (
            "replication {\n  mode       = \"primary\"\n  peer_addr  = \"10.250.0.2\"\n  secret_key = \"lab-secret\"\n  ha {\n    enabled            = true\n    heartbeat_interval = 0.1\n    failure_threshold  = 2\n  }\n}\n",
            "lab-a.hcl:8:26: error: failure detection time `heartbeat_interval` x `failure_threshold` = 0.2 s is below 0.3 s (one delayed heartbeat would cause a failover; raise failure_threshold)",
        ),
        // 26. failure_threshold out of range
        (
            "replication {\n  ha {\n    failure_threshold = 0\n  }\n}\n",
            "lab-a.hcl:3:25: error: `failure_threshold` must be a number between 1 and 100, found 0",
        ),
        // 27. priority out of range
        (
            "replication {\n  ha {\n    priority = 256\n  }\n}\n",
            "lab-a.hcl:3:16: error: `priority` must be a number between 0 and 255, found 256",
        ),
        // 28. HA in standalone mode
        (
            "replication {\n  peer_addr  = \"10.250.0.2\"\n  secret_key = \"lab-secret\"\n  ha {\n    enabled = true\n  }\n}\n",
            "lab-a.hcl:5:15: error: `ha.enabled` = true needs `mode` = \"primary\" or \"replica\", but mode is \"standalone\" (standalone means no HA and no replication; set `mode` in block `replication`)",
        ),
        // 29. primary_addr on a primary
        (
            "replication {\n  mode         = \"primary\"\n  primary_addr = \"10.250.0.1\"\n}\n",
            "lab-a.hcl:3:18: error: `primary_addr` is only used in mode \"replica\", but mode is \"primary\" (the primary listens on `listen_addr`; remove `primary_addr` here)",
        ),
        // 30. replica with TLS but nowhere to connect
        (
            "replication {\n  mode     = \"replica\"\n  tls_ca   = \"/etc/hasync/ca.pem\"\n}\n",
            "lab-a.hcl:2:14: error: mode \"replica\" with TLS configured needs `primary_addr`, the channel address to dial (e.g. primary_addr = \"10.250.0.1:9000\")",
        ),
        // 31. multicast MAC
        (
            "replication {\n  ha {\n    virtual_mac {\n      address   = \"01:00:5e:00:00:01\"\n      interface = \"eth0\"\n    }\n  }\n}\n",
            "lab-a.hcl:4:19: error: `address` = \"01:00:5e:00:00:01\" is a multicast MAC; a virtual MAC must be unicast (the lowest bit of the first octet must be 0, e.g. \"02:...\")",
        ),
        // 32. empty filter
        (
            "replication {\n  ha {\n    conntrack_sync {\n      filter {\n        exclude = true\n      }\n    }\n  }\n}\n",
            "lab-a.hcl:4:7: error: this filter matches every connection and would exclude all of them (set at least one of: src_interface, dst_interface, src_addr, dst_addr, protocol, src_ports, dst_ports)",
        ),
        // 33. reversed port range
        (
            "replication {\n  ha {\n    conntrack_sync {\n      filter {\n        dst_ports = \"2000-1000\"\n      }\n    }\n  }\n}\n",
            "lab-a.hcl:5:21: error: `dst_ports` range \"2000-1000\" is reversed (write the low port first: \"1000-2000\")",
        ),
        // 34. protocol typo
        (
            "replication {\n  ha {\n    conntrack_sync {\n      filter {\n        protocol = \"tpc\"\n      }\n    }\n  }\n}\n",
            "lab-a.hcl:5:20: error: `protocol` must be a protocol name or a number between 0 and 255, found \"tpc\" (did you mean \"tcp\"?)",
        ),
        // 35. ports on a protocol without ports
        (
            "replication {\n  ha {\n    conntrack_sync {\n      filter {\n        protocol  = \"icmp\"\n        dst_ports = \"80\"\n      }\n    }\n  }\n}\n",
            "lab-a.hcl:6:21: error: `dst_ports` needs a protocol with ports (tcp, udp, sctp, dccp, udplite), but `protocol` is 1",
        ),
        // 36. expressions are not evaluated
        (
            "replication {\n  ha {\n    heartbeat_port = var.port\n  }\n}\n",
            "lab-a.hcl:3:22: error: `heartbeat_port` must be a number between 1 and 65535, found an expression, but only literal values are supported",
        ),
        // 37. string where a list is expected
        (
            "replication {\n  ha {\n    monitor_interfaces = \"eth0\"\n  }\n}\n",
            "lab-a.hcl:3:26: error: `monitor_interfaces` must be a list of interface names, found string \"eth0\" (write a list: monitor_interfaces = [\"eth0\"])",
        ),
        // 38. bad list element points at the element
        (
            "replication {\n  ha {\n    monitor_interfaces = [\"eth0\", \"a/b\"]\n  }\n}\n",
            "lab-a.hcl:3:35: error: `monitor_interfaces` must be an interface name of 1 to 15 characters without '/', ':' or spaces, found \"a/b\"",
        ),
        // 39. log level case
        (
            "agent {\n  log_level = \"INFO\"\n}\n",
            "lab-a.hcl:2:15: error: `log_level` must be one of \"trace\", \"debug\", \"info\", \"warn\", \"error\", found \"INFO\" (values are lower case: \"info\")",
        ),
        // 40. node_id zero
        (
            "replication {\n  node_id = 0\n}\n",
            "lab-a.hcl:2:13: error: `node_id` must be a number between 1 and 4294967295, found 0",
        ),
        // 41. relative control socket
        (
            "agent {\n  control_socket = \"hasync.sock\"\n}\n",
            "lab-a.hcl:2:20: error: `control_socket` must be an absolute path, found \"hasync.sock\" (relative paths would depend on the service's working directory)",
        ),
        // 42. host name instead of an address
        (
            "replication {\n  mode         = \"replica\"\n  primary_addr = \"fw-a.example.com:9000\"\n}\n",
            "lab-a.hcl:3:18: error: `primary_addr` must be an address \"ip:port\", \":port\" or \"ip\", found \"fw-a.example.com:9000\" (host names are not resolved: failover must not depend on DNS)",
        ),
        // 43. peer_addr given as CIDR
        (
            "replication {\n  peer_addr = \"10.250.0.2/24\"\n}\n",
            "lab-a.hcl:2:15: error: `peer_addr` must be an IP address, found \"10.250.0.2/24\" (write the address without prefix length, \"10.250.0.2\"; the sync subnet goes in `conntrack_sync.local_addr`)",
        ),
        // 44. label must start with the interface
        (
            "replication {\n  ha {\n    virtual_ip {\n      address   = \"192.168.1.1/24\"\n      interface = \"eth1\"\n      label     = \"lan:vip\"\n    }\n  }\n}\n",
            "lab-a.hcl:6:19: error: `label` \"lan:vip\" must start with the interface name \"eth1\" and have at most 15 characters (e.g. label = \"eth1:vip\")",
        ),
        // 45. sync port collides with the heartbeat port
        (
            "replication {\n  mode       = \"primary\"\n  peer_addr  = \"10.250.0.2\"\n  secret_key = \"lab-secret\"\n  ha {\n    enabled        = true\n    heartbeat_port = 3780\n    conntrack_sync {\n      enabled = true\n    }\n  }\n}\n",
            "lab-a.hcl:8:5: error: `port` 3780 is also the HA `heartbeat_port` (sync and heartbeats need different UDP ports)",
        ),
        // 46. block written as an attribute
        (
            "replication {\n  ha = {}\n}\n",
            "lab-a.hcl:2:3: error: `ha` is a block, not an attribute (write `ha { ... }` without `=`)",
        ),
        // 47. labelled block
        (
            "replication \"main\" {\n}\n",
            "lab-a.hcl:1:13: error: block `replication` takes no labels (write `replication { ... }`)",
        ),
        // 48. attribute written as a block
        (
            "replication {\n  mode {\n  }\n}\n",
            "lab-a.hcl:2:3: error: `mode` is an attribute, not a block (write `mode = ...`)",
        ),
        // 49. down_interfaces_before_sync without sync
        (
            "replication {\n  ha {\n    down_interfaces_before_sync = [\"eth1\"]\n  }\n}\n",
            "lab-a.hcl:3:35: error: `down_interfaces_before_sync` waits for the initial session sync, but conntrack_sync is not enabled (set `enabled = true` in block `conntrack_sync`, or remove this list)",
        ),
        // 50. FortiGate spelling gets a hint
        (
            "replication {\n  ha {\n    conntrack_sync {\n      filter {\n        srcintf = \"port1\"\n      }\n    }\n  }\n}\n",
            "lab-a.hcl:4:7: error: this filter matches every connection (set at least one of: src_interface, dst_interface, src_addr, dst_addr, protocol, src_ports, dst_ports)\nlab-a.hcl:5:9: error: unknown attribute `srcintf` in block `filter` (did you mean `src_interface`?)",
        ),
        // 51. unquoted string
        (
            "replication {\n  ha {\n    conntrack_sync {\n      interface = sync0\n    }\n  }\n}\n",
            "lab-a.hcl:4:19: error: `interface` must be an interface name, found unquoted sync0 (put it in double quotes: interface = \"sync0\")",
        ),
        // 52. a byte-order mark is ignored; positions stay right
        (
            "\u{feff}replication {\n  mode = \"x\"\n}\n",
            "lab-a.hcl:2:10: error: `mode` must be one of \"primary\", \"replica\", \"standalone\", found \"x\"",
        ),
        // 53. interpolation is not evaluated
        (
            "replication {\n  secret_key = \"${var.key}\"\n}\n",
            "lab-a.hcl:2:16: error: `secret_key` must be a string, found a string template, but interpolation and heredocs are not supported",
        ),
        // 54. all errors are reported, sorted by position
        (
            "replication {\n  mode = \"primry\"\n  ha {\n    priority = -1\n    garp_count = 1.5\n  }\n}\nagent {\n  log_format = \"xml\"\n}\n",
            "lab-a.hcl:2:10: error: `mode` must be one of \"primary\", \"replica\", \"standalone\", found \"primry\" (did you mean \"primary\"?)\n\
             lab-a.hcl:4:16: error: `priority` must be a number between 0 and 255, found -1\n\
             lab-a.hcl:5:18: error: `garp_count` must be a whole number between 0 and 100, found 1.5\n\
             lab-a.hcl:9:16: error: `log_format` must be one of \"text\", \"json\", found \"xml\"",
        ),
    ];
    let mut failures = Vec::new();
    for (i, (src, expected)) in cases.iter().enumerate() {
        let got = match parse(src, "lab-a.hcl") {
            Ok(_) => "<parsed without errors>".to_string(),
            Err(e) => e.to_string(),
        };
        if got != *expected {
            failures.push(format!(
                "case {}:\n  expected: {expected}\n  got:      {got}",
                i + 1
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(cases.len() >= 25);
}

#[test]
fn duplicate_attributes_do_not_hide_other_errors() {
    let src = "replication {\n  ha {\n    conntrack_sync {\n      mulitcast_group = \"x\"\n      port = 70000\n      port = 1\n      port = 2\n    }\n  }\n}\n";
    let e = parse(src, "f.hcl").expect_err("errors");
    let lines: Vec<String> = e
        .iter()
        .map(|e| format!("{}:{}", e.line, e.column))
        .collect();
    assert_eq!(lines, ["4:7", "5:14", "6:7", "7:7"], "{e}");
    assert!(e.0[2].message.starts_with("duplicate attribute `port`"));
    assert_eq!(e.0[3].hint.as_deref(), Some("first set at 5:7; remove one"));
}

#[test]
fn positions_count_characters_not_bytes() {
    // "é" is two bytes: the value starts at character column 17 of line 2.
    let src = "# é\nreplication { # é\n  mode = \"x\"\n}\n";
    let e = parse(src, "u.hcl").expect_err("bad mode");
    assert_eq!((e.0[0].line, e.0[0].column), (3, 10));
}

#[test]
fn load_reports_unreadable_file_and_file_errors_with_positions() {
    let missing = Path::new("/nonexistent/hasync/missing.hcl");
    let e = load(missing).expect_err("missing");
    assert_eq!(e.len(), 1);
    assert!(
        e.to_string().starts_with(
            "/nonexistent/hasync/missing.hcl: error: cannot read configuration file: "
        ),
        "{e}"
    );

    let dir = std::env::temp_dir().join(format!("hasync-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cert = dir.join("node.pem");
    std::fs::write(&cert, "cert").expect("write cert");
    let cfg = dir.join("c.hcl");
    let src = format!(
        "replication {{\n  mode        = \"primary\"\n  listen_addr = \":9000\"\n  tls_cert    = \"{}\"\n  tls_key     = \"{}/absent.key\"\n}}\n",
        cert.display(),
        dir.display()
    );
    std::fs::write(&cfg, &src).expect("write config");
    let e = load(&cfg).expect_err("key is missing");
    assert_eq!(e.len(), 1, "{e}");
    let err = &e.0[0];
    assert_eq!((err.line, err.column), (5, 17));
    assert!(err.message.starts_with("`tls_key` file \""), "{err}");
    assert!(
        err.message.contains("absent.key\" cannot be read: "),
        "{err}"
    );

    // With every file present, load succeeds and validate_files agrees.
    std::fs::write(dir.join("absent.key"), "key").expect("write key");
    let c = load(&cfg).expect("valid");
    assert!(validate_files(&c).is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn validate_files_names_the_file() {
    use std::os::unix::fs::PermissionsExt as _;
    let script = std::env::temp_dir().join(format!("hasync-notify-{}", std::process::id()));
    std::fs::write(&script, "#!/bin/sh\n").expect("write script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut c = Config::default();
    c.replication.tls_ca = Some(PathBuf::from("/nonexistent/ca.pem"));
    c.replication.ha.notify_command = Some(script.clone());
    let e = validate_files(&c).expect_err("both bad");
    assert_eq!(e.len(), 2, "{e}");
    assert!(
        e.0[0]
            .to_string()
            .starts_with("/nonexistent/ca.pem: error: `tls_ca` file cannot be read: "),
        "{e}"
    );
    assert_eq!(
        e.0[1].to_string(),
        format!(
            "{}: error: `notify_command` is not an executable file",
            script.display()
        )
    );
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    c.replication.tls_ca = None;
    assert!(validate_files(&c).is_ok());
    let _ = std::fs::remove_file(&script);
}

#[test]
fn empty_file_is_the_default_config() {
    assert_eq!(parse_ok(""), Config::default());
    assert_eq!(
        parse_ok("replication {\n}\nagent {\n}\n"),
        Config::default()
    );
}

#[test]
fn accepted_spellings() {
    let c = parse_ok(
        r#"
replication {
  mode        = "replica"
  listen_addr = "[::]:9100"
  primary_addr = "[2001:db8::1]"
  peer_addr   = "2001:db8::1"
  secret_key  = "12345678"
  node_id     = 4294967295
  ha {
    failback_delay = 0
    garp_interval  = 0.05
    priority       = null
    conntrack_sync {
      multicast_group = ""
      filter {
        src_addr  = "2001:db8::/32"
        protocol  = 132
        src_ports = 5000
        dst_ports = " 10 - 20 "
      }
      filter {
        dst_addr = "10.0.0.1"
        protocol = "17"
      }
    }
  }
  virtual_mac_placeholder_is_not_here = null
}
agent {
  metrics_addr = ""
}
"#
        .replace("  virtual_mac_placeholder_is_not_here = null\n", "")
        .as_str(),
    );
    let r = &c.replication;
    assert_eq!(r.listen_addr, Some("[::]:9100".parse().expect("addr")));
    assert_eq!(
        r.primary_addr,
        Some("[2001:db8::1]:9000".parse().expect("addr"))
    );
    assert_eq!(r.node_id.map(|n| n.get()), Some(u32::MAX));
    assert_eq!(r.ha.failback_delay, Duration::ZERO);
    assert_eq!(r.ha.garp_interval, Duration::from_millis(50));
    assert_eq!(r.ha.priority, 100, "null means default");
    let f = &r.ha.conntrack_sync.filters;
    assert_eq!(f[0].protocol, Some(132));
    assert_eq!(
        f[0].src_ports,
        Some(PortRange {
            start: 5000,
            end: 5000
        })
    );
    assert_eq!(f[0].dst_ports, Some(PortRange { start: 10, end: 20 }));
    assert_eq!(f[1].dst_addr, Some("10.0.0.1/32".parse().expect("net")));
    assert_eq!(f[1].protocol, Some(17));
    assert_eq!(c.agent.metrics_addr, None);
}

/// Builds a config with every attribute of the schema set to its example value.
fn kitchen_sink() -> String {
    fn block(path: &str, depth: usize, out: &mut String) {
        let pad = "  ".repeat(depth);
        out.push_str(&format!("{pad}{} {{\n", schema::leaf(path)));
        for a in REFERENCE.iter().filter(|a| a.block == path) {
            out.push_str(&format!("{pad}  {} = {}\n", a.name, a.example));
        }
        for b in BLOCKS.iter().filter(|b| schema::parent(b.path) == path) {
            block(b.path, depth + 1, out);
        }
        out.push_str(&format!("{pad}}}\n"));
    }
    let mut out = String::new();
    for b in BLOCKS.iter().filter(|b| schema::parent(b.path).is_empty()) {
        block(b.path, 0, &mut out);
    }
    out
}

#[test]
fn every_documented_attribute_is_implemented() {
    // An attribute in REFERENCE that the walker does not read is reported as an internal
    // error, so this fails if the table and the code disagree.
    let c = parse_ok(&kitchen_sink());
    let d = Config::default();
    // Every example differs from the default, so each must have changed something.
    let r = &c.replication;
    assert_ne!(r.ha, d.replication.ha);
    assert_eq!(r.ha.virtual_ips.len(), 1);
    assert_eq!(r.ha.virtual_macs.len(), 1);
    assert_eq!(r.ha.conntrack_sync.filters.len(), 1);
    assert_ne!(c.agent, d.agent);
    let s = &r.ha.conntrack_sync;
    assert_eq!(s.ring_buffer_size, 32 << 20);
    assert_eq!(s.wakeup_min_gap, Duration::from_micros(200));
    assert_eq!(s.realtime_priority, 10);
    assert_eq!(s.sync_delay, Duration::from_secs(5));
    assert_eq!(s.consistency_check, Duration::from_secs(30));
}

fn attr_context(a: &AttrDoc, value: Option<&str>) -> String {
    // Nest `a` (set to `value`, or absent) inside its blocks; repeatable blocks get their
    // required attributes from the examples.
    let chain: Vec<&str> = {
        let mut v = vec![a.block];
        let mut p = a.block;
        while !schema::parent(p).is_empty() {
            p = schema::parent(p);
            v.push(p);
        }
        v.reverse();
        v
    };
    let mut out = String::new();
    for (depth, path) in chain.iter().enumerate() {
        out.push_str(&format!(
            "{}{} {{\n",
            "  ".repeat(depth),
            schema::leaf(path)
        ));
    }
    let pad = "  ".repeat(chain.len());
    for req in REFERENCE
        .iter()
        .filter(|r| r.block == a.block && r.required && r.name != a.name)
    {
        out.push_str(&format!("{pad}{} = {}\n", req.name, req.example));
    }
    if a.block.ends_with(".filter") && a.name != "protocol" {
        out.push_str(&format!("{pad}protocol = \"tcp\"\n"));
    }
    if let Some(v) = value {
        out.push_str(&format!("{pad}{} = {v}\n", a.name));
    }
    for depth in (0..chain.len()).rev() {
        out.push_str(&format!("{}}}\n", "  ".repeat(depth)));
    }
    out
}

#[test]
fn defaults_match_the_reference() {
    for a in REFERENCE {
        let Some(default) = a.default else {
            // No default: leaving it out must leave the field unset, which the walker
            // guarantees by construction; required ones must be reported when absent.
            if a.required {
                let e = parse(&attr_context(a, None), "d.hcl").expect_err("required");
                assert!(
                    e.iter().any(|e| e
                        .message
                        .contains(&format!("missing required attribute `{}`", a.name))),
                    "{}.{}: {e}",
                    a.block,
                    a.name
                );
            }
            continue;
        };
        assert!(
            !a.required,
            "{}.{} is required but has a default",
            a.block, a.name
        );
        let with = parse_ok(&attr_context(a, Some(default)));
        let without = parse_ok(&attr_context(a, None));
        assert_eq!(
            with, without,
            "default of {}.{} is not {default}",
            a.block, a.name
        );
    }
    // And the non-repeatable defaults are Config::default().
    let d = Config::default();
    assert_eq!(d.replication.mode, Mode::Standalone);
    assert_eq!(d.replication.ha.heartbeat_interval, Duration::from_secs(1));
    assert_eq!(d.replication.ha.failure_threshold, 3);
    assert_eq!(d.replication.ha.failback_mode, FailbackMode::Auto);
    assert_eq!(d.replication.ha.failback_delay, Duration::from_secs(60));
    assert_eq!(d.replication.ha.heartbeat_port, 9002);
    let s = &d.replication.ha.conntrack_sync;
    assert_eq!(s.multicast_group, Some(Ipv4Addr::new(225, 0, 0, 50)));
    assert_eq!(s.port, 3780);
    assert_eq!(
        (s.send_buffer_size, s.receive_buffer_size),
        (4 << 20, 16 << 20)
    );
    assert_eq!(d.agent.log_level, LogLevel::Info);
    assert_eq!(d.agent.log_format, LogFormat::Text);
}

#[test]
fn reference_lists_every_attribute() {
    let text = reference();
    for b in BLOCKS {
        assert!(text.contains(&format!("### `{}`", b.path)), "{}", b.path);
    }
    for a in REFERENCE {
        assert!(text.contains(&format!("| `{}` |", a.name)), "{}", a.name);
    }
    // (Every example is valid: `every_documented_attribute_is_implemented` uses them all.)
    // No attribute is listed twice in one block.
    for (i, a) in REFERENCE.iter().enumerate() {
        assert!(
            !REFERENCE[..i]
                .iter()
                .any(|b| b.block == a.block && b.name == a.name),
            "{}.{} listed twice",
            a.block,
            a.name
        );
    }
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    const TOKENS: &[&str] = &[
        "replication",
        "ha",
        "conntrack_sync",
        "virtual_ip",
        "virtual_mac",
        "filter",
        "agent",
        "mode",
        "port",
        "enabled",
        "address",
        "interface",
        "peer_addr",
        "multicast_group",
        "src_ports",
        "protocol",
        "monitor_interfaces",
        "label",
        "secret_key",
        "tls_mutual",
        "{",
        "}",
        "[",
        "]",
        "=",
        ",",
        "\n",
        " ",
        "\"",
        "\"primary\"",
        "\"\"",
        "\"10.0.0.1/24\"",
        "\"eth1\"",
        "true",
        "false",
        "null",
        "0",
        "1",
        "-1",
        "3780",
        "70000",
        "0.5",
        "1e400",
        "\"1-2\"",
        "\"ff02::1\"",
        "var.x",
        "${",
        "#",
        "/*",
        "*/",
        "é",
        "\"a/b\"",
        "\"02:00:5e:00:00:01\"",
    ];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_text_never_panics(src in "\\PC{0,200}") {
            let _ = parse(&src, "fuzz.hcl");
        }

        #[test]
        fn token_soup_never_panics(idx in proptest::collection::vec(0..TOKENS.len(), 0..80)) {
            let src: String = idx.iter().map(|&i| TOKENS[i]).collect::<Vec<_>>().join(" ");
            if let Err(e) = parse(&src, "fuzz.hcl") {
                // Every error has a position inside the text (or names the file).
                let lines = src.lines().count().max(1) + 1;
                for err in e.iter() {
                    prop_assert!(err.line <= lines, "{err}");
                }
            }
        }

        #[test]
        fn mutated_examples_never_panic(cut in 0usize..4000, insert in 0..TOKENS.len()) {
            let mut src = ISSUE_EXAMPLE.to_string() + &kitchen_sink();
            let mut at = cut.min(src.len());
            while !src.is_char_boundary(at) {
                at -= 1;
            }
            src.insert_str(at, TOKENS[insert]);
            let _ = parse(&src, "fuzz.hcl");
        }
    }
}

/// The README's configuration reference, between the markers
/// `<!-- config-reference:begin -->` and `<!-- config-reference:end -->`, must be exactly
/// `reference()` (regenerate it with `hasync config-reference`).
#[test]
fn readme_reference_is_current() {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let text = std::fs::read_to_string(&readme).expect("README.md exists");
    let (begin, end) = (
        "<!-- config-reference:begin -->",
        "<!-- config-reference:end -->",
    );
    let (Some(b), Some(e)) = (text.find(begin), text.find(end)) else {
        panic!("README.md lacks the configuration reference markers");
    };
    let section = text.get(b + begin.len()..e).unwrap_or_default();
    assert_eq!(
        section.trim(),
        reference().trim(),
        "README.md configuration reference is stale: replace it with `hasync::config::reference()`"
    );
}
