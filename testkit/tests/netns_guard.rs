//! The guards really create and remove what they claim to.

use testkit::{NetNs, conntrack_list, veth};

#[test]
fn namespace_is_removed_on_drop_and_veth_carries_traffic() {
    assert!(testkit::is_root(), "namespace tests need root");
    let (a, b) = (NetNs::new("tka").unwrap(), NetNs::new("tkb").unwrap());
    let name = a.name().to_string();
    veth(&a, "va", &["10.77.0.1/24"], &b, "vb", &["10.77.0.2/24"]).unwrap();
    a.exec("ping", ["-c3", "-i0.5", "-W2", "10.77.0.2"])
        .unwrap();
    b.exec(
        "conntrack",
        [
            "-I", "-p", "udp", "-s", "1.1.1.1", "-d", "2.2.2.2", "--sport", "1", "--dport", "2",
            "-t", "50",
        ],
    )
    .unwrap();
    let lines = conntrack_list(&b).unwrap();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].has("dport=2"));
    drop(a);
    let list = String::from_utf8(testkit::run("ip", ["netns", "list"]).unwrap().stdout).unwrap();
    assert!(!list.contains(&name), "{name} still exists: {list}");
}
