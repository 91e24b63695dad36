#!/usr/bin/env bash
# Other servers (pyftpdlib) with the relay (NAT: cache on; routed: --no-cache), and 40
# transfers in one session alternating active and passive.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need vsftpd curl lftp

for topo in $(topos nat routed); do
  setup $topo
  args=(); [[ $topo == routed ]] && args=(--no-cache)
  pyftpd_start
  gate_start "${args[@]}" || fail "$topo ftpgate did not start"
  dl "$topo pyftpdlib curl EPSV" big.bin -- ip netns exec $C curl -sS -o "$OUT" ftp://$SRV_IP/big.bin
  dl "$topo pyftpdlib curl PORT" big.bin -- ip netns exec $C curl -sS -P - --disable-eprt -o "$OUT" ftp://$SRV_IP/big.bin
  dl "$topo pyftpdlib ftplib PASV" big.bin -- ip netns exec $C $PY ftplib $SRV_IP pasv big.bin "$OUT"
  dl "$topo pyftpdlib lftp active" big.bin -- ip netns exec $C lftp -e "set net:max-retries 1; set net:timeout 15; set ftp:passive-mode off; get big.bin -o $OUT; bye" ftp://$SRV_IP
  dl "$topo pyftpdlib one byte per segment port" small.txt -- ip netns exec $C $PY typist $SRV_IP port small.txt "$OUT"
  ops "$topo pyftpdlib"
  server_stop
  vsftpd_start
  if timeout 120 ip netns exec $C $PY many $SRV_IP small.txt "$WORK/pub/small.txt" 40 >"$WORK/case.log" 2>&1; then
    pass "$topo 40 transfers in one session, active/passive alternating"
  else
    fail "$topo 40 transfers in one session ($(tail -c 300 "$WORK/case.log" | tr '\n' ' '))"
  fi
done
summary
