# hasync: two-node active/standby firewall, node A (the preferred active node).
#
# Topology:
#
#               LAN 192.168.1.0/24                         WAN 203.0.113.0/24
#   clients --- eth1 [ node A ] eth0 ---------- upstream ---------- eth0 [ node B ] eth1 --- clients
#                        |  sync0 10.250.0.1/24      10.250.0.2/24  sync0  |
#                        +------------ dedicated sync cable ---------------+
#
# The LAN gateway 192.168.1.1 and the WAN address 203.0.113.10 are virtual: they
# live on whichever node is active. Node B uses two-node-b.hcl; the two files differ
# only in `mode`, `peer_addr`, `priority` and `local_addr`.
#
# Check the file with:   hasync check-config examples/two-node-a.hcl

replication {
  # The role this node starts in. "primary" on A, "replica" on B.
  mode = "primary"

  # The other node's address on the sync link. Heartbeats go there (UDP port
  # `heartbeat_port`); unicast sync would too.
  peer_addr = "10.250.0.2"

  # Pre-shared key authenticating every heartbeat and sync message. It must be
  # identical on both nodes, at least 8 characters; generate one with
  #   openssl rand -base64 32
  # Anyone who knows it can inject connection state: keep this file mode 0600.
  secret_key = "lab-secret-please-change"

  ha {
    enabled = true

    # Lower wins. A (50) is preferred over B (100, the default).
    priority = 50

    # Peer declared dead after failure_threshold missed heartbeats:
    # 1 s x 3 = 3 s to detect a failure. Must stay between 0.3 s and 300 s.
    heartbeat_interval = 1
    failure_threshold  = 3

    # When A comes back after a failure it takes the active role back, but only
    # after 60 s so its connection table is synchronised first. Use "manual" to
    # move the role back by hand in a maintenance window instead.
    failback_mode  = "auto"
    failback_delay = 60

    # Losing link on any of these demotes the node (like CARP demotion), so a
    # node with a dead LAN or WAN port hands over instead of black-holing traffic.
    monitor_interfaces = ["eth0", "eth1"]

    # The LAN gateway address clients use. Several virtual_ip blocks may be given.
    virtual_ip {
      address   = "192.168.1.1/24" # CIDR: the prefix decides the connected route
      interface = "eth1"
      label     = "eth1:vip"       # optional; must start with the interface name
    }

    # The public WAN address.
    virtual_ip {
      address   = "203.0.113.10/24"
      interface = "eth0"
    }

    # Connection-state replication: every conntrack entry created on the active node
    # is sent to the standby so established sessions survive a failover.
    conntrack_sync {
      enabled   = true
      interface = "sync0"            # dedicated link, never a data interface

      # Sync traffic goes to this IPv4 multicast group on `interface`.
      # Set it to "" to send unicast to peer_addr instead (see unicast.hcl).
      multicast_group = "225.0.0.50"
      port            = 3780         # UDP; same on both nodes

      # This node's address on the sync link. Optional; when set, peer_addr must
      # be in the same subnet (checked at load time).
      local_addr = "10.250.0.1/24"
    }
  }
}

# Process settings. Everything here is optional; these are the defaults.
agent {
  metrics_addr   = "127.0.0.1:9724"          # Prometheus; "" disables
  control_socket = "/run/hasync/hasync.sock" # used by `hasync status` etc.
  log_level      = "info"
  log_format     = "text"
}
