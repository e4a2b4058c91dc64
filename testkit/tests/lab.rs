//! The lab topology forwards the client's traffic through fw-a with NAT, and the
//! strict policy drops what it should.

use testkit::lab::{CLIENT_IP, Lab, LabOptions, SERVER_IP, SERVER_IP6, WAN_VIP};

#[test]
fn client_reaches_server_through_fw_a_with_snat() {
    let lab = Lab::new(&LabOptions {
        prefix: "tl".into(),
        ..Default::default()
    })
    .unwrap();
    // Three tries each: the first echo of a fresh topology can be lost while
    // neighbour discovery settles on a loaded machine (ping succeeds on any reply).
    lab.client
        .exec("ping", ["-c3", "-i0.5", "-W2", SERVER_IP])
        .unwrap();
    lab.client
        .exec("ping", ["-6", "-c3", "-i0.5", "-W2", SERVER_IP6])
        .unwrap();
    let table = testkit::conntrack_list(&lab.fw_a.ns).unwrap();
    let icmp = table
        .iter()
        .find(|l| l.has("type=8"))
        .expect("icmp entry on fw-a");
    assert!(
        icmp.has(&format!("src={CLIENT_IP}")) && icmp.has(&format!("dst={WAN_VIP}")),
        "{icmp:?}"
    );
    // fw-b tracks only its own traffic (e.g. IPv6 neighbour discovery), nothing forwarded.
    assert!(
        !testkit::conntrack_list(&lab.fw_b.ns)
            .unwrap()
            .iter()
            .any(|l| l.has(&format!("src={CLIENT_IP}"))),
        "fw-b carried nothing"
    );
    // The server cannot open connections towards the LAN.
    assert!(lab.server.exec("ping", ["-c1", "-W1", CLIENT_IP]).is_err());
}
