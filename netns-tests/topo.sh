#!/usr/bin/env bash
# Builds the test topology: client (10.0.1.2) -- router (10.0.1.1 | 10.0.2.1) -- server (10.0.2.2),
# dual-stack: the same hosts have fd00:1::2, fd00:1::1 | fd00:2::1, fd00:2::2 (and fd00:4::/64,
# fd00:5::/64 like 10.0.4.0/24, 10.0.5.0/24).
# Usage: topo.sh up nat|routed [PREFIX] | topo.sh down [PREFIX]
# The router carries a conventional stateful firewall on both families (for IPv6 the stock one of
# home and office routers, RFC 6092): FORWARD policy DROP, INVALID dropped in FORWARD and INPUT,
# new connections only from the LAN, INPUT closed to new connections except from the LAN (and
# ICMPv6, which neighbour discovery needs); in "nat" mode MASQUERADE (NAT66 for IPv6) on its WAN
# side and the server has no route back to the client network.
set -euo pipefail
cmd=${1:?up|down}
if [[ $cmd == up ]]; then mode=${2:?nat|routed}; P=${3:-fg}; else P=${2:-fg}; fi
C=${P}-cli R=${P}-rtr S=${P}-srv T=${P}-3rd X=${P}-thf
ALL="$C $R $S $T $X"
if [[ $cmd == down ]]; then
  for ns in $ALL; do ip netns pids $ns 2>/dev/null | xargs -r kill -9 2>/dev/null || true; done
  for ns in $ALL; do ip netns del $ns 2>/dev/null || true; done
  exit 0
fi
for ns in $ALL; do ip netns del $ns 2>/dev/null || true; ip netns add $ns; ip -n $ns link set lo up; done
ip link add ${P}c0 netns $C type veth peer name ${P}lan netns $R
ip link add ${P}s0 netns $S type veth peer name ${P}wan netns $R
ip -n $C addr add 10.0.1.2/24 dev ${P}c0; ip -n $C link set ${P}c0 up
ip -n $R addr add 10.0.1.1/24 dev ${P}lan; ip -n $R link set ${P}lan up
ip -n $R addr add 10.0.2.1/24 dev ${P}wan; ip -n $R link set ${P}wan up
ip -n $S addr add 10.0.2.2/24 dev ${P}s0; ip -n $S link set ${P}s0 up
ip -n $C route add default via 10.0.1.1
# a third party (10.0.4.2) behind the server, reachable from the router: what a bounce or a
# hostile 227 would aim at
ip link add ${P}t0 netns $T type veth peer name ${P}s3 netns $S
ip -n $S addr add 10.0.4.1/24 dev ${P}s3; ip -n $S link set ${P}s3 up
ip -n $T addr add 10.0.4.2/24 dev ${P}t0; ip -n $T link set ${P}t0 up
ip -n $T route add default via 10.0.4.1
ip netns exec $S sysctl -qw net.ipv4.ip_forward=1
ip -n $R route add 10.0.4.0/24 via 10.0.2.2
# a second LAN host (10.0.5.2) that races for announced data ports
ip link add ${P}x0 netns $X type veth peer name ${P}thf netns $R
ip -n $R addr add 10.0.5.1/24 dev ${P}thf; ip -n $R link set ${P}thf up
ip -n $X addr add 10.0.5.2/24 dev ${P}x0; ip -n $X link set ${P}x0 up
ip -n $X route add default via 10.0.5.1
ip netns exec $R sysctl -qw net.ipv4.ip_forward=1
# IPv6 on the same links (nodad: usable at once)
v6() { ip -n "$1" -6 addr add "$2" dev "$3" nodad; }
v6 $C fd00:1::2/64 ${P}c0; v6 $R fd00:1::1/64 ${P}lan; v6 $R fd00:2::1/64 ${P}wan; v6 $S fd00:2::2/64 ${P}s0
v6 $S fd00:4::1/64 ${P}s3; v6 $T fd00:4::2/64 ${P}t0; v6 $R fd00:5::1/64 ${P}thf; v6 $X fd00:5::2/64 ${P}x0
ip -n $C -6 route add default via fd00:1::1
ip -n $T -6 route add default via fd00:4::1
ip -n $X -6 route add default via fd00:5::1
ip -n $R -6 route add fd00:4::/64 via fd00:2::2
ip netns exec $S sysctl -qw net.ipv6.conf.all.forwarding=1
ip netns exec $R sysctl -qw net.ipv6.conf.all.forwarding=1
# a conventional stateful firewall
ip netns exec $R iptables -P FORWARD DROP
ip netns exec $R iptables -A FORWARD -m conntrack --ctstate INVALID -j DROP
ip netns exec $R iptables -A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
ip netns exec $R iptables -A FORWARD -i ${P}lan -j ACCEPT
ip netns exec $R iptables -A FORWARD -i ${P}thf -j ACCEPT
ip netns exec $R iptables -P INPUT DROP
ip netns exec $R iptables -A INPUT -m conntrack --ctstate INVALID -j DROP
ip netns exec $R iptables -A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
ip netns exec $R iptables -A INPUT -i lo -j ACCEPT
ip netns exec $R iptables -A INPUT -i ${P}lan -p icmp -j ACCEPT
ip netns exec $R ip6tables -P FORWARD DROP
ip netns exec $R ip6tables -A FORWARD -m conntrack --ctstate INVALID -j DROP
ip netns exec $R ip6tables -A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
ip netns exec $R ip6tables -A FORWARD -i ${P}lan -j ACCEPT
ip netns exec $R ip6tables -A FORWARD -i ${P}thf -j ACCEPT
ip netns exec $R ip6tables -P INPUT DROP
ip netns exec $R ip6tables -A INPUT -m conntrack --ctstate INVALID -j DROP
ip netns exec $R ip6tables -A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
ip netns exec $R ip6tables -A INPUT -i lo -j ACCEPT
ip netns exec $R ip6tables -A INPUT -p ipv6-icmp -j ACCEPT
if [[ $mode == nat ]]; then
  ip netns exec $R iptables -t nat -A POSTROUTING -o ${P}wan -j MASQUERADE
  ip netns exec $R ip6tables -t nat -A POSTROUTING -o ${P}wan -j MASQUERADE
else
  ip -n $S route add 10.0.1.0/24 via 10.0.2.1
  ip -n $S route add 10.0.5.0/24 via 10.0.2.1
  ip -n $S -6 route add fd00:1::/64 via fd00:2::1
  ip -n $S -6 route add fd00:5::/64 via fd00:2::1
fi
