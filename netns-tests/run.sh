#!/usr/bin/env bash
# All netns tests: client / router / server namespaces, real FTP servers (vsftpd, pyftpdlib), real
# clients (curl, lftp, wget, Python ftplib, busybox ftpget), ftpgate in the router. One PASS/FAIL
# line per case, then "N passed, N failed". Needs root and the packages from scripts/install-deps.
P=${P:-fgt}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[[ $(id -u) == 0 ]] || { echo "run as root"; exit 1; }
[[ -x $BIN ]] || { echo "missing $BIN (cargo build --release)"; exit 1; }
rm -rf "$WORK/dl" "$WORK/cache" "$WORK/ftpgate.log"
make_files
OUT=$WORK/dl/out
PY="$SYSPY $HERE/ftpclient.py"
cleanup() { gate_stop; server_stop; topo_down; }
trap cleanup EXIT

# dl NAME FILE [norelay] -- CMD...: CMD must write $OUT identical to the server's FILE, and the
# transfer must have gone through ftpgate's relay (unless "norelay").
dl() {
  local name=$1 file=$2 relay=yes; shift 2
  [[ $1 == norelay ]] && { relay=no; shift; }
  [[ $1 == -- ]] && shift
  rm -f "$OUT"
  local before; before=$(relayed)
  if ! timeout 60 "$@" >"$WORK/case.log" 2>&1; then
    fail "$name (exit $?: $(tail -c 300 "$WORK/case.log" | tr '\n' ' '))"; return
  fi
  if ! cmp -s "$OUT" "$WORK/pub/$file"; then fail "$name (file differs)"; return; fi
  if [[ $relay == yes ]]; then
    busywait 3000 bash -c "(( \$(grep -c 'bytes to client' '$WORK/ftpgate.log') > $before ))" ||
      { fail "$name (not relayed by ftpgate)"; return; }
  fi
  pass "$name"
}

clients() { # topology label
  local t=$1 U=ftp://$SRV_IP
  dl "$t curl EPSV" big.bin -- ip netns exec $C curl -sS -o "$OUT" $U/big.bin
  dl "$t curl PASV" big.bin -- ip netns exec $C curl -sS --disable-epsv -o "$OUT" $U/big.bin
  dl "$t curl EPRT" big.bin -- ip netns exec $C curl -sS -P - -o "$OUT" $U/big.bin
  dl "$t curl PORT" big.bin -- ip netns exec $C curl -sS -P - --disable-eprt -o "$OUT" $U/big.bin
  dl "$t lftp passive" big.bin -- ip netns exec $C lftp -e "set net:max-retries 1; set net:timeout 15; set ftp:passive-mode on; get big.bin -o $OUT; bye" $U
  dl "$t lftp active" big.bin -- ip netns exec $C lftp -e "set net:max-retries 1; set net:timeout 15; set ftp:passive-mode off; get big.bin -o $OUT; bye" $U
  dl "$t wget passive" big.bin -- ip netns exec $C wget -q -O "$OUT" $U/big.bin
  dl "$t wget active" big.bin -- ip netns exec $C wget -q --no-passive-ftp -O "$OUT" $U/big.bin
  dl "$t ftplib PASV" big.bin -- ip netns exec $C $PY ftplib $SRV_IP pasv big.bin "$OUT"
  dl "$t ftplib PORT" big.bin -- ip netns exec $C $PY ftplib $SRV_IP port big.bin "$OUT"
  dl "$t busybox ftpget" small.txt -- ip netns exec $C busybox ftpget $SRV_IP "$OUT" small.txt
  for m in pasv epsv port eprt; do
    dl "$t one byte per segment $m" small.txt -- ip netns exec $C $PY typist $SRV_IP $m small.txt "$OUT"
  done
  dl "$t one byte at a time, Nagle, PORT" small.txt -- ip netns exec $C $PY typist $SRV_IP port small.txt "$OUT" nagle 0.01
  dl "$t one byte per 50 ms, EPRT" small.txt -- ip netns exec $C $PY typist $SRV_IP eprt small.txt "$OUT" nodelay 0.05
  dl "$t garbage lines, then downloads on the same and a new session" small.txt -- ip netns exec $C $PY garbage $SRV_IP small.txt "$OUT"
  dl "$t pipelined TYPE I + PASV" big.bin -- ip netns exec $C $PY pipeline $SRV_IP big.bin "$OUT"
}

ops() { # topology label: upload and file operations as ftpuser
  local t=$1
  rm -rf "$WORK/home/sub"
  if timeout 60 ip netns exec $C $PY ops $SRV_IP "$WORK/pub/big.bin" >"$WORK/case.log" 2>&1 &&
     cmp -s "$WORK/home/sub/moved.bin" "$WORK/pub/big.bin"; then
    pass "$t STOR, LIST, CWD, PWD, MKD, RNFR/RNTO, DELE"
  else
    fail "$t STOR, LIST, CWD, PWD, MKD, RNFR/RNTO, DELE ($(tail -c 300 "$WORK/case.log" | tr '\n' ' '))"
  fi
}

rules_idempotent() {
  local a b
  inR "$BIN" rules apply && a=$(inR iptables-save | grep -c ftpgate)
  inR "$BIN" rules apply && b=$(inR iptables-save | grep -c ftpgate)
  [[ $a == 4 && $b == 4 ]] && pass "rules apply is idempotent ($a rules)" || fail "rules apply twice: $a then $b rules"
  inR "$BIN" rules remove; inR "$BIN" rules remove
  a=$(inR iptables-save | grep -c ftpgate); b=$(inR iptables-save | grep -c 'ctstate INVALID')
  [[ $a == 0 && $b == 2 ]] && ! inR ip rule | grep -q 'lookup 2121' &&
    pass "rules remove leaves none of ftpgate's rules and keeps the firewall" ||
    fail "rules remove left $a ftpgate rules / $b INVALID rules"
}

compare_alg() { # topology: 20 MB PASV download time, kernel ALG vs ftpgate
  local t=$1 ta tg
  gate_stop; alg_start
  ta=$(inC curl -sS --disable-epsv -o "$OUT" -w '%{time_total}' ftp://$SRV_IP/big.bin) && cmp -s "$OUT" "$WORK/pub/big.bin" ||
    { fail "$t kernel ALG reference download"; ta=-; }
  alg_stop; gate_start
  tg=$(inC curl -sS --disable-epsv -o "$OUT" -w '%{time_total}' ftp://$SRV_IP/big.bin) && cmp -s "$OUT" "$WORK/pub/big.bin" ||
    { fail "$t ftpgate timed download"; tg=-; }
  echo "INFO: $t 20 MB PASV download: kernel ALG ${ta}s, ftpgate ${tg}s"
}

for topo in nat routed; do
  topo_up $topo
  rules_idempotent
  vsftpd_start
  gate_start || fail "$topo ftpgate did not start"
  if [[ $topo == nat ]]; then
    msg=$(inR "$BIN" run --cache-dir "$WORK/cache2" 2>&1 >/dev/null); rc=$?
    [[ $rc != 0 && $(wc -l <<<"$msg") == 1 && $msg == *"already bound"* ]] &&
      pass "second run on the same queue: one-line error ($msg)" || fail "second run on the same queue: rc=$rc: $msg"
    msg=$(inR "$BIN" run --queue 77 --cache-dir /proc/nonexistent 2>&1 >/dev/null); rc=$?
    [[ $rc != 0 && $(wc -l <<<"$msg") == 1 && $msg == *"cache dir"* ]] &&
      pass "unusable --cache-dir: one-line error ($msg)" || fail "unusable --cache-dir: rc=$rc: $msg"
  fi
  clients "$topo vsftpd"
  ops "$topo vsftpd"
  compare_alg "$topo"
  server_stop
  vsftpd_start ssl
  dl "$topo FTPS lftp ssl-force passive" big.bin norelay -- ip netns exec $C lftp -e "set net:max-retries 1; set net:timeout 15; set ftp:ssl-force true; set ssl:verify-certificate no; set ftp:passive-mode on; get big.bin -o $OUT; bye" ftp://$SRV_IP
  dl "$topo FTPS curl --ssl-reqd" big.bin norelay -- ip netns exec $C curl -sS --ssl-reqd -k -o "$OUT" ftp://$SRV_IP/big.bin
  grep -q "AUTH TLS accepted" "$WORK/ftpgate.log" && pass "$topo FTPS handed off" || fail "$topo FTPS handoff not logged"
  server_stop
  pyftpd_start
  dl "$topo pyftpdlib curl EPSV" big.bin -- ip netns exec $C curl -sS -o "$OUT" ftp://$SRV_IP/big.bin
  dl "$topo pyftpdlib curl PORT" big.bin -- ip netns exec $C curl -sS -P - --disable-eprt -o "$OUT" ftp://$SRV_IP/big.bin
  dl "$topo pyftpdlib ftplib PASV" big.bin -- ip netns exec $C $PY ftplib $SRV_IP pasv big.bin "$OUT"
  dl "$topo pyftpdlib lftp active" big.bin -- ip netns exec $C lftp -e "set net:max-retries 1; set net:timeout 15; set ftp:passive-mode off; get big.bin -o $OUT; bye" ftp://$SRV_IP
  dl "$topo pyftpdlib one byte per segment port" small.txt -- ip netns exec $C $PY typist $SRV_IP port small.txt "$OUT"
  ops "$topo pyftpdlib"
  server_stop
  pyftpd_start foreign masq
  dl "$topo 227 naming a third party is not followed" small.txt -- ip netns exec $C $PY typist $SRV_IP pasv small.txt "$OUT"
  dl "$topo bounce PORT/EPRT refused, session continues" small.txt -- ip netns exec $C $PY bounce $SRV_IP small.txt "$OUT"
  grep -q "10.0.2.99" "$WORK/pyftpd.log" && fail "$topo server saw the bounce address" || pass "$topo server never saw the bounce address"
  server_stop
  vsftpd_start
  if timeout 120 ip netns exec $C $PY many $SRV_IP small.txt "$WORK/pub/small.txt" 40 >"$WORK/case.log" 2>&1; then
    pass "$topo 40 transfers in one session, active/passive alternating"
  else
    fail "$topo 40 transfers in one session ($(tail -c 300 "$WORK/case.log" | tr '\n' ' '))"
  fi
  gate_kill_keep_rules
  if [[ $topo == nat ]]; then
    dl "$topo fail-open: passive download while no ftpgate runs" big.bin norelay -- ip netns exec $C curl -sS -o "$OUT" ftp://$SRV_IP/big.bin
  fi
  gate_start
  dl "$topo after restart: PORT download" big.bin -- ip netns exec $C curl -sS -P - --disable-eprt -o "$OUT" ftp://$SRV_IP/big.bin
  server_stop
  gate_stop
  grep -q "SIGTERM received; exiting" "$WORK/ftpgate.log" && pass "$topo SIGTERM ends ftpgate cleanly" || fail "$topo SIGTERM not handled"
  grep -q "panicked" "$WORK/ftpgate.log" && fail "$topo ftpgate panicked" || pass "$topo ftpgate log has no panic"
  topo_down
done
summary
