# hasync: replica with the TCP/TLS replication channel.
#
# Besides UDP heartbeats and conntrack sync, a replica can open a TCP channel to
# the primary (bulk resynchronisation after a restart). The primary accepts it on
# `listen_addr`; the replica dials `primary_addr`. With TLS and `tls_mutual`,
# both sides present certificates signed by the same private CA, so neither can be
# impersonated even by a host that knows the pre-shared key. Only the bulk resync
# goes over TLS (live changes stay on UDP); if the channel fails (refused
# certificate, primary unreachable) the replica logs why and resyncs over UDP.
# Certificates: `hasync cert init --dir DIR`, then
# `hasync cert issue --dir DIR --name node-b --ip 10.250.0.2` per node.
#
# The primary's file would have mode = "primary", listen_addr = ":9000", no
# primary_addr, and the same tls_* settings with its own certificate.
#
# The certificate files must exist and be readable when hasync starts
# (`hasync check-config` reports missing ones with the line that names them).

replication {
  mode = "replica"

  # Listen too, so the channel works the same way once this node has been
  # promoted. ":9000" means every IPv4 address; "[::]:9000" for IPv6.
  listen_addr = ":9000"

  # The primary's channel address, "ip:port" (port 9000 if omitted). Host names
  # are not accepted: failover must not depend on DNS.
  primary_addr = "10.250.0.1:9000"

  peer_addr  = "10.250.0.1"
  secret_key = "lab-secret-please-change"

  # PEM files. Absolute paths only.
  tls_cert   = "/etc/hasync/tls/node-b.pem"   # this node's certificate
  tls_key    = "/etc/hasync/tls/node-b.key"   # and its private key (mode 0600)
  tls_ca     = "/etc/hasync/tls/ca.pem"       # CA that signed both nodes' certs
  tls_mutual = true                            # require the peer's certificate too

  # Optional fixed node identifier carried in sync messages (1..4294967295).
  # Left unset it is derived at runtime.
  node_id = 2

  ha {
    enabled            = true
    heartbeat_interval = 0.5       # fractions of a second are allowed
    failure_threshold  = 4         # 0.5 s x 4 = 2 s to detect a dead primary
    failback_mode      = "manual"  # an operator moves the role back

    # Run on every role change (absolute path; must be executable).
    notify_command = "/usr/local/bin/on-role-change"

    virtual_ip {
      address   = "192.168.1.1/24"
      interface = "eth1"
    }

    conntrack_sync {
      enabled     = true
      interface   = "sync0"
      expect_sync = true           # also replicate FTP/SIP expectations
    }
  }
}

agent {
  log_level  = "debug"
  log_format = "json"              # one JSON object per line, for log shippers
}
