#!/usr/bin/env bash
# A home router: masquerades the LAN ($LAN) behind its wan address, forwards only what the
# LAN opened (plus replies), like a CPE with address-dependent filtering. Forwarding itself
# is the container's net.ipv4.ip_forward sysctl (compose.yaml).
set -euo pipefail
: "${LAN:?LAN (the inside subnet) is required}"
nft -f - <<RULES
table ip nat {
  chain post {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr $LAN ip daddr != $LAN masquerade
  }
}
table ip filter {
  chain forwarding {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    ip saddr $LAN accept
  }
}
RULES
touch /run/nat-ready
echo "NAT up: $LAN masqueraded"
exec sleep infinity
