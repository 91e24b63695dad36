#!/usr/bin/env bash
# NAT64 (RFC 6146) with ftpgate as the FTP ALG of RFC 6384: an IPv6-only client, a router
# running tayga (userspace NAT64 on a TUN device) with the network-specific prefix fd77:64::/96
# and a dynamic IPv4 pool masqueraded on the WAN, IPv4-only servers (vsftpd, and pyftpdlib with
# EPSV and EPRT removed from its command table). The client × mode × server table without and
# with ftpgate (INFO; ftpgate's row must pass), ALGS, a cache hit, the bounce refused.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need vsftpd curl lftp wget tayga ip6tables
PFX=fd77:64:: SRV64=fd77:64::10.0.2.2 TUN=${P}t64
RULES_ARGS="--nat64-interface $TUN" # tayga's IPv4 side of a session is not intercepted again

nat64_up() { # the client loses its IPv4 address; tayga translates fd77:64::/96 <-> 192.168.255.0/24
  inC ip addr del $CLI_IP/24 dev ${P}c0
  mkdir -p "$WORK/tayga"
  cat >"$WORK/tayga.conf" <<EOC
tun-device $TUN
ipv4-addr 192.168.255.1
prefix ${PFX}/96
dynamic-pool 192.168.255.0/24
data-dir $WORK/tayga
EOC
  inR tayga -c "$WORK/tayga.conf" --mktun >/dev/null || return 1
  inR ip link set dev $TUN up
  inR ip addr add 192.168.254.1/32 dev $TUN
  inR ip -6 addr add fd77:ffff::1/128 dev $TUN nodad
  inR ip route add 192.168.255.0/24 dev $TUN
  inR ip -6 route add ${PFX}/96 dev $TUN
  inR iptables -A FORWARD -i $TUN -j ACCEPT   # translated connections are the LAN's
  ip netns exec $R tayga -c "$WORK/tayga.conf" -d >"$WORK/tayga.log" 2>&1 &
  echo $! >"$WORK/tayga.pid"
  sleep 0.3; kill -0 "$(cat "$WORK/tayga.pid")" 2>/dev/null
}

cases() { # "label|command", against the server at $SRV64
  local L="set net:max-retries 1; set net:timeout 8; set ftp:passive-mode" u="ftp://[$SRV64]"
  echo "curl EPSV|curl -sS -m 15 -o $OUT $u/big.bin"
  echo "curl EPRT|curl -sS -m 15 -P - -o $OUT $u/big.bin"
  echo "lftp passive|lftp -e '$L on; get big.bin -o $OUT; bye' $u"
  echo "lftp active|lftp -e '$L off; get big.bin -o $OUT; bye' $u"
  echo "wget passive|wget -q -T 10 -t 1 -O $OUT $u/big.bin"
  echo "wget active|wget -q -T 10 -t 1 --no-passive-ftp -O $OUT $u/big.bin"
  echo "ftplib EPSV|$PY ftplib $SRV64 pasv big.bin $OUT"
  echo "ftplib EPRT|$PY ftplib $SRV64 port big.bin $OUT"
}

declare -A RES
row() { # topology server who
  local t=$1 srv=$2 who=$3 label cmd r lim=20
  [[ $who == none ]] && lim=6 # what fails without an ALG hangs until a timeout: 6 s is 50 times a download
  while IFS='|' read -r label cmd; do
    rm -f "$OUT"
    if timeout $lim ip netns exec $C bash -c "$cmd" >"$WORK/case.log" 2>&1 && cmp -s "$OUT" "$WORK/pub/big.bin"; then r=ok; else r=failed; fi
    RES[$srv,$who,$label]=$r
    if [[ $who == ftpgate ]]; then
      [[ $r == ok ]] && pass "$t NAT64 $srv: $label" || fail "$t NAT64 $srv: $label ($(tail -c 200 "$WORK/case.log" | tr '\n' ' '))"
    fi
  done < <(cases)
}

for topo in $(topos nat); do
  setup $topo
  nat64_up || { fail "$topo: tayga did not start"; summary; exit 1; }
  for srv in vsftpd pyftpdlib-noext; do
    server_stop
    if [[ $srv == vsftpd ]]; then vsftpd_start; else pyftpd_start noext; fi
    busywait 5000 inC bash -c "exec 3<>/dev/tcp/$SRV64/21" 2>/dev/null || fail "$topo NAT64: $srv not reachable through tayga"
    gate_stop; row "$topo" $srv none
    gate_start --no-cache --nat64-prefix $PFX/96 || fail "$topo ftpgate did not start"
    row "$topo" $srv ftpgate
  done
  echo "INFO: $topo NAT64 (tayga, prefix $PFX/96): client × mode × server, 20 MB download"
  printf 'INFO: %-14s | %-12s | %-12s | %-16s | %-16s\n' client "vsftpd" "vsftpd" "pyftpdlib-noext" "pyftpdlib-noext"
  printf 'INFO: %-14s | %-12s | %-12s | %-16s | %-16s\n' "" "no ALG" "ftpgate" "no ALG" "ftpgate"
  while IFS='|' read -r label _; do
    printf 'INFO: %-14s | %-12s | %-12s | %-16s | %-16s\n' "$label" "${RES[vsftpd,none,$label]}" "${RES[vsftpd,ftpgate,$label]}" \
      "${RES[pyftpdlib-noext,none,$label]}" "${RES[pyftpdlib-noext,ftpgate,$label]}"
  done < <(cases)
  # ALGS, against the server without EPSV (the EPSV that follows needs the translation)
  dl "$topo NAT64 ALGS STATUS64/DISABLE64/ENABLE64 answered 216, then EPSV" small.txt -- ip netns exec $C $PY algs $SRV64 small.txt "$OUT"
  echo "INFO: $topo ALGS: $(head -1 "$WORK/case.log")"
  # the cache: the entry keys by the IPv4 server
  gate_stop; rm -rf "$WORK/cache"; gate_start --nat64-prefix $PFX/96
  cdl "$topo NAT64 cache miss (EPSV)" miss "$WORK/pub/big.bin" -- ip netns exec $C curl -sS -o "$OUT" "ftp://[$SRV64]/big.bin"
  cdl "$topo NAT64 cache hit (EPSV)" hit "$WORK/pub/big.bin" -- ip netns exec $C curl -sS -o "$OUT" "ftp://[$SRV64]/big.bin"
  cdl "$topo NAT64 cache hit (EPRT, wget active)" hit "$WORK/pub/big.bin" -- ip netns exec $C wget -q --no-passive-ftp -O "$OUT" "ftp://[$SRV64]/big.bin"
  [[ $(inR "$BIN" cache list --cache-dir "$WORK/cache" | grep -c '10.0.2.2') -ge 1 ]] && pass "$topo NAT64 cache entry keyed by the IPv4 server" ||
    fail "$topo NAT64 cache entry: $(inR "$BIN" cache list --cache-dir "$WORK/cache" | head -3 | tr '\n' ' ')"
  # kill -9 in the middle of a NAT64 session whose lines changed length (EPRT |2| -> PORT): the
  # restarted ftpgate resumes it translated, and the same session downloads again (EPRT, EPSV)
  rm -f "$WORK"/sig.*
  inC $PY restart $SRV64 small.txt "$WORK/pub/small.txt" "$WORK/sig" >"$WORK/case.log" 2>&1 & cpid=$!
  if busywait 10000 test -f "$WORK/sig.ready"; then
    m=$(logmark)
    gate_kill_keep_rules; gate_start --nat64-prefix $PFX/96; touch "$WORK/sig.go"
    if wait $cpid && logsince "$m" "resumed [0-9]+ sessions"; then
      pass "$topo NAT64 kill -9 mid-session: the resumed session is translated again (EPRT and EPSV downloads)"
    else
      fail "$topo NAT64 kill -9 mid-session ($(tail -c 300 "$WORK/case.log" | tr '\n' ' '))"
    fi
  else
    kill $cpid; fail "$topo NAT64 kill -9 mid-session: client not ready ($(tail -c 300 "$WORK/case.log"))"
  fi
  # the bounce: EPRT |2| naming the third party behind the server (through the prefix)
  server_stop; pyftpd_start foreign; third_party_start
  inC $PY bounceattack $SRV64 fd77:64::10.0.4.2 >"$WORK/case.log" 2>&1
  [[ ! -s $WORK/third.log ]] && grep -q "500 ftpgate" "$WORK/case.log" &&
    pass "$topo NAT64 bounce: EPRT |2| at a third party refused, nothing connected to it" ||
    fail "$topo NAT64 bounce: third party saw $(wc -l <"$WORK/third.log") ($(tr '\n' ' ' <"$WORK/case.log"))"
  third_party_stop
  kill "$(cat "$WORK/tayga.pid")" 2>/dev/null
done
summary
