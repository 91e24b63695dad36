#!/usr/bin/env bash
# IPv6 through ftpgate, on the dual-stack topology (routed with the stock stateful IPv6 firewall,
# and NAT66): the client × mode × family matrix with no helper, with the kernel ALG and with
# ftpgate (INFO table; ftpgate's row must pass), both families at once, STOR, a cache hit over
# IPv6, the bounce (EPRT |2| at a third party, mixed families), data-port theft over IPv6.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need vsftpd curl lftp wget ip6tables

# the matrix: "label|command" lines, family × client × mode
cases() {
  local L="set net:max-retries 1; set net:timeout 10; set ftp:passive-mode" fam u h
  for fam in 4 6; do
    if [[ $fam == 4 ]]; then u=ftp://$SRV_IP h=$SRV_IP; else u="ftp://[$SRV6]" h=$SRV6; fi
    echo "IPv$fam curl EPSV|curl -sS -o $OUT $u/big.bin"
    [[ $fam == 4 ]] && echo "IPv4 curl PASV|curl -sS --disable-epsv -o $OUT $u/big.bin"
    echo "IPv$fam curl EPRT|curl -sS -P - -o $OUT $u/big.bin"
    [[ $fam == 4 ]] && echo "IPv4 curl PORT|curl -sS -P - --disable-eprt -o $OUT $u/big.bin"
    echo "IPv$fam lftp passive|lftp -e '$L on; get big.bin -o $OUT; bye' $u"
    echo "IPv$fam lftp active|lftp -e '$L off; get big.bin -o $OUT; bye' $u"
    echo "IPv$fam wget passive|wget -q -O $OUT $u/big.bin"
    echo "IPv$fam wget active|wget -q --no-passive-ftp -O $OUT $u/big.bin"
    echo "IPv$fam ftplib passive|$PY ftplib $h pasv big.bin $OUT"
    echo "IPv$fam ftplib active|$PY ftplib $h port big.bin $OUT"
  done
}

declare -A RES
# row TOPO WHO: every case once; the outcome (ok and seconds, or failed) into RES[WHO,label]
row() {
  local t=$1 who=$2 label cmd t0 r lim=20
  [[ $who == none ]] && lim=6 # without a helper active mode hangs until the server gives up: 6 s is 50 times a download
  while IFS='|' read -r label cmd; do
    rm -f "$OUT"; t0=$(date +%s%N)
    if timeout $lim ip netns exec $C bash -c "$cmd" >"$WORK/case.log" 2>&1 && cmp -s "$OUT" "$WORK/pub/big.bin"; then
      r=$(awk -v n=$(($(date +%s%N) - t0)) 'BEGIN { printf "ok %.3fs", n / 1e9 }')
    else
      r=failed
    fi
    RES[$who,$label]=$r
    if [[ $who == ftpgate ]]; then
      [[ $r == ok* ]] && pass "$t ftpgate $label" || fail "$t ftpgate $label ($(tail -c 200 "$WORK/case.log" | tr '\n' ' '))"
    fi
  done < <(cases)
}

matrix() { # topology label
  local t=$1 label cmd
  gate_stop; alg_stop; row "$t" none
  alg_start; row "$t" alg; alg_stop
  gate_start --no-cache || fail "$t ftpgate did not start"
  row "$t" ftpgate
  echo "INFO: $t: client × mode × family (20 MB download; dual-stack vsftpd, stateful firewall on both families)"
  printf 'INFO: %-22s | %-14s | %-14s | %-14s\n' "$t" "no helper" "kernel ALG" "ftpgate"
  while IFS='|' read -r label cmd; do
    printf 'INFO: %-22s | %-14s | %-14s | %-14s\n' "$label" "${RES[none,$label]}" "${RES[alg,$label]}" "${RES[ftpgate,$label]}"
  done < <(cases)
}

both_families() { # topology label: an IPv4 and an IPv6 download at once, both through the relay
  local t=$1 a b
  rm -f "$OUT.4" "$OUT.6"
  inC curl -sS -o "$OUT.4" ftp://$SRV_IP/big.bin & a=$!
  inC curl -sS -o "$OUT.6" "ftp://[$SRV6]/big.bin" & b=$!
  wait $a && wait $b && cmp -s "$OUT.4" "$WORK/pub/big.bin" && cmp -s "$OUT.6" "$WORK/pub/big.bin" &&
    pass "$t both families at once: an IPv4 and an IPv6 download side by side" || fail "$t both families at once"
}

security6() { # topology label; ftpgate runs (with the cache)
  local t=$1 cpid
  # bounce: pyftpdlib on IPv6 would obey EPRT |2| at a host behind it (permit_foreign_addresses)
  server_stop; PYFTPD_IP=$SRV6 pyftpd_start foreign
  : >"$WORK/third.log"
  ip netns exec $P-3rd "$SYSPY" "$HERE/listener.py" "$WORK/third.log" fd00:4::2 25 8080 >/dev/null 2>&1 &
  echo $! >"$WORK/third.pid"
  busywait 3000 inS bash -c "exec 3<>/dev/tcp/fd00:4::2/8080" 2>/dev/null; sleep 0.2; : >"$WORK/third.log"
  inC $PY bounceattack $SRV6 fd00:4::2 >"$WORK/case.log" 2>&1
  if [[ ! -s $WORK/third.log ]] && grep -q "500 ftpgate" "$WORK/case.log"; then
    pass "$t bounce over IPv6: EPRT |2| + LIST at a third party refused, nothing connected to it"
  else
    fail "$t bounce over IPv6: third party saw $(wc -l <"$WORK/third.log") connections ($(tr '\n' ' ' <"$WORK/case.log"))"
  fi
  dl "$t IPv6 bounce EPRT |2| / privileged port / other family refused, session continues" small.txt -- \
    ip netns exec $C $PY bounce $SRV6 small.txt "$OUT" fd00:2::99
  gate_stop
  inC $PY bounceattack $SRV6 fd00:4::2 >"$WORK/case.log" 2>&1
  [[ -s $WORK/third.log ]] && pass "$t bounce reference: without ftpgate pyftpdlib does connect to the IPv6 third party" ||
    echo "INFO: $t bounce reference: the attack did not reach the third party without ftpgate either ($(tr '\n' ' ' <"$WORK/case.log"))"
  third_party_stop
  gate_start
  # data-port theft: another LAN host (fd00:5::2) races to the announced EPSV endpoint
  server_stop; VSFTPD_DUAL=1 vsftpd_start
  rm -f "$WORK"/sig.*
  inC $PY pasvwait $SRV6 big.bin "$OUT" "$WORK/sig" >"$WORK/case.log" 2>&1 & cpid=$!
  if busywait 10000 test -s "$WORK/sig.ep"; then
    read -r ip port <"$WORK/sig.ep"
    local got; got=$(ip netns exec $P-thf "$SYSPY" "$HERE/ftpclient.py" grab "$ip" "$port" | tail -1)
    touch "$WORK/sig.go"
    if wait $cpid && cmp -s "$OUT" "$WORK/pub/big.bin" && [[ $got == 0 ]]; then
      pass "$t port theft over IPv6 (EPSV): the racing LAN host got 0 bytes, the client the whole file"
    else
      fail "$t port theft over IPv6: thief got $got bytes; client: $(tail -c 200 "$WORK/case.log")"
    fi
  else
    kill $cpid; fail "$t port theft over IPv6: no EPSV endpoint"
  fi
  grep -q "refused connection from \\[fd00:5::2\\]" "$WORK/ftpgate.log" && pass "$t IPv6 port theft logged" || fail "$t IPv6 port theft not logged"
}

pyftpd6() { # topology label: the clients over IPv6 against pyftpdlib on IPv6 (ftpgate runs)
  local t=$1 L="set net:max-retries 1; set net:timeout 10; set ftp:passive-mode" u="ftp://[$SRV6]"
  server_stop; PYFTPD_IP=$SRV6 pyftpd_start
  dl "$t pyftpdlib IPv6 curl EPSV" big.bin -- ip netns exec $C curl -sS -o "$OUT" $u/big.bin
  dl "$t pyftpdlib IPv6 curl EPRT" big.bin -- ip netns exec $C curl -sS -P - -o "$OUT" $u/big.bin
  dl "$t pyftpdlib IPv6 lftp passive" big.bin -- ip netns exec $C lftp -e "$L on; get big.bin -o $OUT; bye" $u
  dl "$t pyftpdlib IPv6 lftp active" big.bin -- ip netns exec $C lftp -e "$L off; get big.bin -o $OUT; bye" $u
  dl "$t pyftpdlib IPv6 wget passive" big.bin -- ip netns exec $C wget -q -O "$OUT" $u/big.bin
  dl "$t pyftpdlib IPv6 wget active" big.bin -- ip netns exec $C wget -q --no-passive-ftp -O "$OUT" $u/big.bin
  dl "$t pyftpdlib IPv6 ftplib EPSV" big.bin -- ip netns exec $C $PY ftplib $SRV6 pasv big.bin "$OUT"
  dl "$t pyftpdlib IPv6 ftplib EPRT" big.bin -- ip netns exec $C $PY ftplib $SRV6 port big.bin "$OUT"
  for m in epsv eprt; do
    dl "$t pyftpdlib IPv6 one byte per segment $m" small.txt -- ip netns exec $C $PY typist $SRV6 $m small.txt "$OUT"
  done
  dl "$t pyftpdlib IPv6: PASV answered by the server, PORT refused, then EPSV on the same session" small.txt -- \
    ip netns exec $C $PY v6classic $SRV6 small.txt "$OUT"
  echo "INFO: $t PASV/PORT on an IPv6 session: $(grep -E '^(PASV|PORT):' "$WORK/case.log" | tr '\n' ' ')"
}

for topo in $(topos nat routed); do
  setup $topo
  VSFTPD_DUAL=1 vsftpd_start
  matrix "$topo"
  both_families "$topo"
  gate_stop; rm -rf "$WORK/cache"; gate_start --metrics 127.0.0.1:9121 --xferlog "$WORK/xferlog"
  ops "$topo IPv6" "$SRV6"
  cdl "$topo IPv6 cache miss (EPSV)" miss "$WORK/pub/big.bin" -- ip netns exec $C curl -sS -o "$OUT" "ftp://[$SRV6]/big.bin"
  cdl "$topo IPv6 cache hit (EPSV)" hit "$WORK/pub/big.bin" -- ip netns exec $C curl -sS -o "$OUT" "ftp://[$SRV6]/big.bin"
  cdl "$topo IPv6 cache hit (EPRT, wget active)" hit "$WORK/pub/big.bin" -- ip netns exec $C wget -q --no-passive-ftp -O "$OUT" "ftp://[$SRV6]/big.bin"
  [[ $(inR "$BIN" cache list --cache-dir "$WORK/cache" | grep -c 'fd00:2::2') -ge 1 ]] && pass "$topo the cache entry names the server's IPv6 address" ||
    fail "$topo cache entry without the IPv6 server: $(inR "$BIN" cache list --cache-dir "$WORK/cache" | head -3 | tr '\n' ' ')"
  scrape "$WORK/m6" && (( $(metric "$WORK/m6" 'ftpgate_sessions_total{mode="transparent",family="ipv6"}') >= 3 )) &&
    pass "$topo metrics count IPv6 sessions by family" || fail "$topo metrics: $(grep sessions_total "$WORK/m6" | tr '\n' ' ')"
  grep -Eq " [0-9]+ fd00:1::2 20971520 /big.bin b _ o a " "$WORK/xferlog" && pass "$topo xferlog names the IPv6 client as vsftpd does (no brackets)" ||
    fail "$topo xferlog: $(head -2 "$WORK/xferlog")"
  security6 "$topo"
  pyftpd6 "$topo"
  server_stop; VSFTPD_DUAL=1 vsftpd_start
  dl "$topo vsftpd IPv6: PASV answered by the server, PORT refused, then EPSV on the same session" small.txt -- \
    ip netns exec $C $PY v6classic $SRV6 small.txt "$OUT"
  echo "INFO: $topo vsftpd PASV/PORT on an IPv6 session: $(grep -E '^(PASV|PORT):' "$WORK/case.log" | tr '\n' ' ')"
done
summary
