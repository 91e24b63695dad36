#!/usr/bin/env bash
# --server-mode (issue 18): a server whose own firewall drops its outgoing connections still
# serves curl PORT, lftp active and ftplib active through --server-mode passive; a server that
# drops connections to its passive ports still serves curl PASV/EPSV, lftp and ftplib passive
# through --server-mode active; each case first fails without the conversion (the reference);
# the cache, an upload, a bounce and a [[policy]] server-mode per server.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need vsftpd curl lftp

L="set net:max-retries 1; set net:timeout 5; set ftp:passive-mode"

active_clients() { # label prefix
  local t=$1 U=ftp://$SRV_IP
  dl "$t curl PORT" big.bin -- ip netns exec $C curl -sS -P - --disable-eprt -o "$OUT" $U/big.bin
  dl "$t curl EPRT" big.bin -- ip netns exec $C curl -sS -P - -o "$OUT" $U/big.bin
  dl "$t lftp active" big.bin -- ip netns exec $C lftp -e "$L off; get big.bin -o $OUT; bye" $U
  dl "$t ftplib active" big.bin -- ip netns exec $C $PY ftplib $SRV_IP port big.bin "$OUT"
}

passive_clients() { # label prefix
  local t=$1 U=ftp://$SRV_IP
  dl "$t curl PASV" big.bin -- ip netns exec $C curl -sS --disable-epsv -o "$OUT" $U/big.bin
  dl "$t curl EPSV" big.bin -- ip netns exec $C curl -sS -o "$OUT" $U/big.bin
  dl "$t lftp passive" big.bin -- ip netns exec $C lftp -e "$L on; get big.bin -o $OUT; bye" $U
  dl "$t ftplib passive" big.bin -- ip netns exec $C $PY ftplib $SRV_IP pasv big.bin "$OUT"
}

reference() { # label CMD...: without the conversion the download must fail (the firewall works)
  local t=$1; shift
  rm -f "$OUT"
  if timeout 15 "$@" >"$WORK/case.log" 2>&1 && cmp -s "$OUT" "$WORK/pub/big.bin"; then
    fail "$t reference: the download passed without the conversion (the server's firewall let it through)"
  else
    pass "$t reference: without the conversion the download fails"
  fi
}

cases() { # topology label
  local t=$1 m
  # the server cannot connect outwards: active mode needs --server-mode passive
  inS iptables -A OUTPUT -p tcp --syn -j DROP
  gate_start --no-cache || { fail "$t ftpgate did not start"; return; }
  reference "$t server cannot connect out, curl PORT" ip netns exec $C curl -sS --connect-timeout 5 -m 10 -P - --disable-eprt -o "$OUT" ftp://$SRV_IP/big.bin
  gate_stop
  for args in "--no-cache" ""; do
    gate_start --server-mode passive --metrics 127.0.0.1:9121 $args || { fail "$t ftpgate --server-mode passive did not start"; return; }
    m=$(logmark)
    active_clients "$t --server-mode passive ${args:-(cache)}:"
    logsince "$m" "sent to the server as PASV" && pass "$t --server-mode passive ${args:-(cache)}: the server was asked PASV" || fail "$t no PASV conversion logged"
    scrape "$WORK/mc" && (( $(metric "$WORK/mc" 'ftpgate_data_transfers_total{mode="active_to_passive",result="ok"}') >= 4 )) &&
      pass "$t --server-mode passive ${args:-(cache)}: metrics count the converted transfers" || fail "$t metrics: $(grep data_transfers_total "$WORK/mc" | tr '\n' ' ')"
    gate_stop
  done
  logsince 0 "cache hit .*big.bin" && pass "$t --server-mode passive: cache hits" || fail "$t --server-mode passive: no cache hit"
  gate_start --server-mode passive --no-cache --listen 10.0.1.1:2121 --allow-from 10.0.1.0/24
  dl "$t --server-mode passive: the explicit proxy, client PORT" big.bin -- \
    ip netns exec $C $SYSPY $HERE/proxyclient.py userhost 10.0.1.1:2121 $SRV_IP anonymous x port big.bin "$OUT"
  dl "$t --server-mode passive: the explicit proxy, client EPRT" big.bin -- \
    ip netns exec $C $SYSPY $HERE/proxyclient.py userhost 10.0.1.1:2121 $SRV_IP anonymous x eprt big.bin "$OUT"
  rm -f "$WORK/home/conv-up.bin"
  inC curl -sS -P - --disable-eprt -T "$WORK/pub/big.bin" ftp://ftpuser:ftppass@$SRV_IP/conv-up.bin &&
    cmp -s "$WORK/home/conv-up.bin" "$WORK/pub/big.bin" && pass "$t --server-mode passive: curl PORT upload identical on the server" ||
    fail "$t --server-mode passive: upload"
  r=$(inC $PY bounce $SRV_IP big.bin "$OUT" 10.0.1.3 2>&1) && pass "$t --server-mode passive: PORT/EPRT at a third party still refused" ||
    fail "$t --server-mode passive: bounce ($r)"
  gate_stop
  inS iptables -D OUTPUT -p tcp --syn -j DROP

  # the server's passive ports are closed: passive mode needs --server-mode active
  inS iptables -A INPUT -p tcp --syn ! --dport 21 -j DROP
  gate_start --no-cache || { fail "$t ftpgate did not start"; return; }
  reference "$t server's passive ports closed, curl EPSV" ip netns exec $C curl -sS --connect-timeout 5 -m 10 -o "$OUT" ftp://$SRV_IP/big.bin
  gate_stop
  for args in "--no-cache" ""; do
    gate_start --server-mode active --metrics 127.0.0.1:9121 $args || { fail "$t ftpgate --server-mode active did not start"; return; }
    m=$(logmark)
    passive_clients "$t --server-mode active ${args:-(cache)}:"
    scrape "$WORK/mc" && (( $(metric "$WORK/mc" 'ftpgate_data_transfers_total{mode="passive_to_active",result="ok"}') >= 4 )) &&
      pass "$t --server-mode active ${args:-(cache)}: metrics count the converted transfers" || fail "$t metrics: $(grep data_transfers_total "$WORK/mc" | tr '\n' ' ')"
    logsince "$m" 'rewrote "(PASV|EPSV)" -> "PORT' && pass "$t --server-mode active ${args:-(cache)}: the server was sent PORT" || fail "$t no PORT conversion logged"
    [[ -n $args ]] || { logsince "$m" "cache hit .*big.bin" && pass "$t --server-mode active: cache hits" || fail "$t --server-mode active: no cache hit"; }
    gate_stop
  done
  gate_start --server-mode active --no-cache --listen 10.0.1.1:2121 --allow-from 10.0.1.0/24
  dl "$t --server-mode active: the explicit proxy, client PASV" big.bin -- \
    ip netns exec $C $SYSPY $HERE/proxyclient.py userhost 10.0.1.1:2121 $SRV_IP anonymous x pasv big.bin "$OUT"
  dl "$t --server-mode active: the explicit proxy, client EPSV" big.bin -- \
    ip netns exec $C $SYSPY $HERE/proxyclient.py userhost 10.0.1.1:2121 $SRV_IP anonymous x epsv big.bin "$OUT"
  gate_stop
  # a [[policy]] table: active towards this server only
  cat >"$WORK/mode.toml" <<EOC
cache-dir = "$WORK/cache"
no-cache = true
[[policy]]
servers = ["$SRV_IP/32"]
server-mode = "active"
EOC
  gate_start --config "$WORK/mode.toml" || { fail "$t ftpgate with [[policy]] server-mode did not start"; return; }
  dl "$t [[policy]] server-mode = active: curl EPSV" big.bin -- ip netns exec $C curl -sS -o "$OUT" ftp://$SRV_IP/big.bin
  gate_stop
  inS iptables -D INPUT -p tcp --syn ! --dport 21 -j DROP
  r=$(inR "$BIN" run --cache-dir "$WORK/cache" --server-mode sideways 2>&1); [[ $? != 0 && $r == *sideways* ]] &&
    pass "$t --server-mode sideways is a clear error" || fail "$t bad --server-mode: $r"
}

for topo in $(topos nat routed); do
  setup $topo
  vsftpd_start
  cases "$topo"
done
summary
