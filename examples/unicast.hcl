# hasync: conntrack sync by unicast instead of multicast.
#
# Use unicast when the sync path is routed, crosses a switch that filters
# multicast (IGMP snooping without a querier), or is IPv6: sync datagrams are
# then sent straight to peer_addr. Both nodes must use the same mode and port.
#
# This example also shows a node with a WAN interface that gets its address by
# DHCP (virtual_mac), sync filters, and the engine tuning knobs.

replication {
  mode       = "primary"
  peer_addr  = "10.250.0.2"            # unicast sync goes here, so it is required
  secret_key = "lab-secret-please-change"

  ha {
    enabled = true

    # The WAN interface is DHCP-configured: instead of moving an IP, move the MAC
    # the ISP's DHCP server knows, and renew the lease on takeover.
    virtual_mac {
      address   = "02:00:5e:00:00:01"   # locally administered unicast MAC
      interface = "eth0"
      dhcp      = true
    }

    virtual_ip {
      address   = "192.168.1.1/24"
      interface = "eth1"
    }

    # A node that just started keeps eth1 down until it has received the full
    # connection table, so it never forwards traffic for sessions it cannot see
    # (FortiGate's down_intfs_before_sess_sync).
    down_interfaces_before_sync = ["eth1"]

    conntrack_sync {
      enabled         = true
      interface       = "sync0"
      multicast_group = ""               # "" = unicast to peer_addr
      port            = 3780
      local_addr      = "10.250.0.1/24"

      # Socket buffers. The appliance default of 64 KiB (seed doc) holds only
      # ~8 ms of traffic at 200k new connections/s; these are hasync's defaults.
      send_buffer_size    = 4194304      # 4 MiB
      receive_buffer_size = 16777216     # 16 MiB

      # Keep datagrams below the sync link MTU (1500 - 28 for IPv4 + UDP).
      max_datagram_size = 1472

      # Only replicate connections older than 5 s: short-lived ones (DNS, health
      # checks) would be gone before a failover anyway (FortiGate's
      # session-pickup-delay). 0 = replicate everything at once.
      sync_delay_ms = 5000

      # Filters choose what is synchronised. Without include filters, everything
      # is; with some, a connection must match at least one. A matching
      # `exclude = true` filter always wins. Inside one filter all criteria must match.

      # Synchronise LAN-originated traffic...
      filter {
        src_interface = "eth1"
        src_addr      = "192.168.1.0/24"
      }

      # ...and inbound HTTPS to the published server...
      filter {
        dst_addr  = "203.0.113.10"       # a bare IP means one host
        protocol  = "tcp"
        dst_ports = "443"
      }

      # ...but never the monitoring system's polling.
      filter {
        src_addr  = "192.168.1.250"
        protocol  = "udp"
        dst_ports = "161-162"
        exclude   = true
      }
    }
  }
}
