# hasync: two-node active/standby firewall, node B (the standby).
#
# The counterpart of two-node-a.hcl; read that file for the topology and the
# meaning of each setting. Only the lines marked "differs from A" change.

replication {
  mode      = "replica"                 # differs from A: starts as standby
  peer_addr = "10.250.0.1"              # differs from A: node A's sync address

  # Same key on both nodes.
  secret_key = "lab-secret-please-change"

  ha {
    enabled = true
    # priority is left at its default, 100: A (50) is preferred.

    heartbeat_interval = 1
    failure_threshold  = 3
    failback_mode      = "auto"
    failback_delay     = 60

    monitor_interfaces = ["eth0", "eth1"]

    # The same virtual addresses as on A: they move to whichever node is active.
    virtual_ip {
      address   = "192.168.1.1/24"
      interface = "eth1"
      label     = "eth1:vip"
    }

    virtual_ip {
      address   = "203.0.113.10/24"
      interface = "eth0"
    }

    conntrack_sync {
      enabled         = true
      interface       = "sync0"
      multicast_group = "225.0.0.50"
      port            = 3780
      local_addr      = "10.250.0.2/24"   # differs from A
    }
  }
}
