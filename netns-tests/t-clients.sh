#!/usr/bin/env bash
# Real clients through ftpgate (data connections forwarded by the kernel, --no-cache): curl,
# lftp, wget, ftplib, busybox in every mode; lines split to one byte a segment, garbage and
# pipelined commands; uploads and file operations; clean FIN teardown; the kernel ALG's time for
# the same download as INFO.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need vsftpd curl lftp wget busybox

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

teardown() { # topology label: control connections end without FIN retransmissions
  local t=$1 n
  inC $PY ftplib $SRV_IP pasv small.txt "$OUT" >/dev/null 2>&1 || { fail "$t teardown: download failed"; return; }
  sleep 0.5 # the first retransmission of an unacknowledged FIN comes after 200 ms
  n=$( { inC ss -Htan state fin-wait-1 state closing state last-ack '( dport = :21 )'
         inS ss -Htan state fin-wait-1 state closing state last-ack '( sport = :21 )'; } | wc -l)
  [[ $n == 0 ]] && pass "$t control connection closes cleanly (every FIN acknowledged)" ||
    fail "$t control connection: $n sockets still waiting for the ACK of their FIN"
}

compare_alg() { # topology: 20 MB PASV download time, kernel ALG vs ftpgate
  local t=$1 ta tg
  gate_stop; alg_start
  ta=$(inC curl -sS --disable-epsv -o "$OUT" -w '%{time_total}' ftp://$SRV_IP/big.bin) && cmp -s "$OUT" "$WORK/pub/big.bin" ||
    { fail "$t kernel ALG reference download"; ta=-; }
  alg_stop; gate_start --no-cache
  tg=$(inC curl -sS --disable-epsv -o "$OUT" -w '%{time_total}' ftp://$SRV_IP/big.bin) && cmp -s "$OUT" "$WORK/pub/big.bin" ||
    { fail "$t ftpgate timed download"; tg=-; }
  echo "INFO: $t 20 MB PASV download: kernel ALG ${ta}s, ftpgate ${tg}s"
}

for topo in $(topos nat routed); do
  setup $topo
  vsftpd_start
  gate_start --no-cache || fail "$topo ftpgate did not start"
  clients "$topo vsftpd"
  teardown "$topo vsftpd"
  ops "$topo vsftpd"
  compare_alg "$topo"
done
summary
