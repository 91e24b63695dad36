#!/usr/bin/env bash
# FTPS: AUTH TLS sessions are handed off and pass encrypted (lftp, curl).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need vsftpd openssl curl lftp

for topo in $(topos nat routed); do
  setup $topo
  args=(); [[ $topo == routed ]] && args=(--no-cache)
  vsftpd_start ssl
  gate_start "${args[@]}" || fail "$topo ftpgate did not start"
  dl "$topo FTPS lftp ssl-force passive" big.bin norelay -- ip netns exec $C lftp -e "set net:max-retries 1; set net:timeout 15; set ftp:ssl-force true; set ssl:verify-certificate no; set ftp:passive-mode on; get big.bin -o $OUT; bye" ftp://$SRV_IP
  dl "$topo FTPS curl --ssl-reqd" big.bin norelay -- ip netns exec $C curl -sS --ssl-reqd -k -o "$OUT" ftp://$SRV_IP/big.bin
  grep -q "AUTH TLS accepted" "$WORK/ftpgate.log" && pass "$topo FTPS handed off" || fail "$topo FTPS handoff not logged"
done
summary
