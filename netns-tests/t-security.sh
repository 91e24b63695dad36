#!/usr/bin/env bash
# Security: FTP bounce (PORT/EPRT at a third party), hostile 227/229 naming a third party,
# data-port theft by a racing host in both modes, the data-port timeout; on relayed and on
# kernel-forwarded data connections.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need vsftpd curl

security() { # topology label [ftpgate args: --no-cache = data connections forwarded by the kernel]; ftpgate runs
  local t=$1 mark; shift; local args=("$@")
  # 1. bounce: pyftpdlib would obey (permit_foreign_addresses); the third party sees nothing
  server_stop; pyftpd_start foreign; third_party_start
  inC $PY bounceattack $SRV_IP 10.0.4.2 >"$WORK/case.log" 2>&1
  if [[ ! -s $WORK/third.log ]] && grep -q "500 ftpgate" "$WORK/case.log"; then
    pass "$t bounce: PORT/EPRT + LIST at a third party refused, nothing connected to it"
  else
    fail "$t bounce: third party saw $(wc -l <"$WORK/third.log") connections ($(tr '\n' ' ' <"$WORK/case.log"))"
  fi
  gate_stop  # reference: without ftpgate the same attack reaches the third party
  inC $PY bounceattack $SRV_IP 10.0.4.2 >"$WORK/case.log" 2>&1
  [[ -s $WORK/third.log ]] && pass "$t bounce reference: without ftpgate pyftpdlib does connect to the third party" ||
    echo "INFO: $t bounce reference: the attack did not reach the third party without ftpgate either ($(tr '\n' ' ' <"$WORK/case.log"))"
  gate_start "${args[@]}"
  # 2. hostile server: its 227/229 name the third party; the relay goes to the control server
  server_stop; : >"$WORK/third.log"
  ip netns exec $S "$SYSPY" "$HERE/hostile.py" $SRV_IP 10.0.4.2 7000 "$WORK/pub/small.txt" >/dev/null 2>&1 &
  echo $! >"$WORK/server.pid"
  busywait 5000 inS bash -c "exec 3<>/dev/tcp/$SRV_IP/21" 2>/dev/null
  dl "$t hostile 227 naming a third party: ftplib (follows the address) gets the file" small.txt -- ip netns exec $C $PY ftplib $SRV_IP pasv small.txt "$OUT"
  dl "$t hostile 229: curl EPSV gets the file" small.txt -- ip netns exec $C curl -sS -o "$OUT" ftp://$SRV_IP/small.txt
  [[ ! -s $WORK/third.log ]] && pass "$t hostile server: the third party saw no connection" ||
    fail "$t hostile server: the third party saw $(cat "$WORK/third.log")"
  third_party_stop
  server_stop; vsftpd_start
  # 3. data-port theft: another LAN host races to the announced passive endpoint
  rm -f "$WORK"/sig.*
  inC $PY pasvwait $SRV_IP big.bin "$OUT" "$WORK/sig" >"$WORK/case.log" 2>&1 & local cpid=$!
  if busywait 10000 test -s "$WORK/sig.ep"; then
    read -r ip port <"$WORK/sig.ep"
    local got; got=$(ip netns exec $P-thf "$SYSPY" "$HERE/ftpclient.py" grab "$ip" "$port" | tail -1)
    touch "$WORK/sig.go"
    if wait $cpid && cmp -s "$OUT" "$WORK/pub/big.bin" && [[ $got == 0 ]]; then
      pass "$t port theft (passive): the racing LAN host got 0 bytes, the client the whole file"
    else
      fail "$t port theft (passive): thief got $got bytes; client: $(tail -c 200 "$WORK/case.log")"
    fi
    got=$(ip netns exec $P-thf "$SYSPY" "$HERE/ftpclient.py" grab "$ip" "$port" | tail -1)
    [[ $got == 0 ]] && pass "$t port theft (passive): nothing after the transfer either" || fail "$t port theft after the transfer: $got bytes"
  else
    kill $cpid; fail "$t port theft: no PASV endpoint"
  fi
  grep -q "refused connection from 10.0.5.2" "$WORK/ftpgate.log" && pass "$t port theft logged" || fail "$t port theft not logged"
  # active mode: a host on the server's side (the third party) races the server to the
  # endpoint the server was told (the router's, behind NAT; the client's, routed)
  rm -f "$WORK"/sig.*; local mark; mark=$(logmark)
  inC $PY portwait $SRV_IP big.bin "$OUT" "$WORK/sig" >"$WORK/case.log" 2>&1 & cpid=$!
  if busywait 10000 test -s "$WORK/sig.ep"; then
    read -r ip port <"$WORK/sig.ep"
    local rw; rw=$(tail -n +$((mark + 1)) "$WORK/ftpgate.log" | grep -o 'rewrote "PORT [0-9,]*" -> "PORT [0-9,]*"' | tail -1)
    if [[ -n $rw ]]; then
      IFS=, read -r a b c d p1 p2 <<<"$(sed 's/.*-> "PORT \([0-9,]*\)"/\1/' <<<"$rw")"
      ip=$a.$b.$c.$d port=$((p1 * 256 + p2))
    fi
    local got; got=$(ip netns exec $P-3rd "$SYSPY" "$HERE/ftpclient.py" grab "$ip" "$port" | tail -1)
    touch "$WORK/sig.go"
    if wait $cpid && cmp -s "$OUT" "$WORK/pub/big.bin" && [[ $got == 0 ]]; then
      pass "$t port theft (active, $ip:$port): the racing host got 0 bytes, the client the whole file"
    else
      fail "$t port theft (active, $ip:$port): thief got $got bytes; client: $(tail -c 200 "$WORK/case.log")"
    fi
  else
    kill $cpid; fail "$t port theft (active): client not ready"
  fi
  # an announced port nobody connects to closes after --data-timeout
  gate_stop; gate_start "${args[@]}" --data-timeout 2
  rm -f "$WORK"/sig.*; mark=$(logmark)
  inC $PY pasvwait $SRV_IP small.txt "$OUT" "$WORK/sig" >"$WORK/case.log" 2>&1 & cpid=$!
  if busywait 5000 logsince "$mark" "no connection from 10.0.1.2 within 2s"; then
    pass "$t an unused data port closes after --data-timeout 2"
  else
    fail "$t data port timeout not logged"
  fi
  touch "$WORK/sig.go"; wait $cpid
  gate_stop; gate_start
}

security_forwarded() { # topology label: the same attacks on data connections the kernel forwards
  gate_stop; gate_start --no-cache; security "$1 kernel-forwarded" --no-cache
}

for topo in $(topos nat routed); do
  setup $topo
  vsftpd_start
  gate_start --no-cache || fail "$topo ftpgate did not start"
  security "$topo"
  security_forwarded "$topo"
  server_stop
  pyftpd_start foreign masq
  dl "$topo 227 naming a third party is not followed" small.txt -- ip netns exec $C $PY typist $SRV_IP pasv small.txt "$OUT"
  dl "$topo bounce PORT/EPRT refused, session continues" small.txt -- ip netns exec $C $PY bounce $SRV_IP small.txt "$OUT"
  grep -q "10.0.2.99" "$WORK/pyftpd.log" && fail "$topo server saw the bounce address" || pass "$topo server never saw the bounce address"
done
summary
