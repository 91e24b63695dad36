#!/usr/bin/env bash
# Explicit proxy mode (--listen): USER user@host, SITE, proxy logins, lftp/ncftp proxy
# settings, access rules, the cache and the relay as for intercepted sessions.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need vsftpd curl lftp ncftpget

ncftp_via_proxy() {
  local type=$1 name=$2 H=$WORK/nchome
  rm -rf "$H" "$WORK/ncout"; mkdir -p "$H/.ncftp" "$WORK/ncout"
  cat >"$H/.ncftp/firewall" <<EOC
firewall-type=$type
firewall-host=10.0.1.1
firewall-port=2121
firewall-user=bob
firewall-password=pw-of-bob
firewall-exception-list=
passive=on
EOC
  id nctest >/dev/null 2>&1 || useradd -M -s /bin/sh nctest
  usermod -d "$H" nctest 2>/dev/null; chown -R nctest "$H" "$WORK/ncout"
  rm -f "$OUT"
  dl "$name" big.bin -- bash -c "ip netns exec $C runuser -u nctest -- ncftpget -u ftpuser -p ftppass $SRV_IP $WORK/ncout big.bin && mv $WORK/ncout/big.bin $OUT"
}

explicit_proxy() { # topology label; vsftpd runs, ftpgate not. Explicit proxy mode on 10.0.1.1:2121.
  local t="$1 explicit proxy" X="$SYSPY $HERE/proxyclient.py" PX=10.0.1.1:2121 r m
  rm -rf "$WORK/cache"
  gate_start --listen $PX --allow-from 10.0.1.0/24 --allow-dest 10.0.2.0/24 || { fail "$t: ftpgate did not start"; return; }
  for m in pasv port epsv eprt; do
    rm -f "$WORK/home/up-proxy.bin"
    dl "$t USER user@host, $m: download" big.bin -- ip netns exec $C $X userhost $PX $SRV_IP ftpuser ftppass $m big.bin "$OUT" "$WORK/pub/big.bin"
    cmp -s "$WORK/home/up-proxy.bin" "$WORK/pub/big.bin" && pass "$t USER user@host, $m: upload" || fail "$t USER user@host, $m: upload differs"
  done
  ncftp_via_proxy 1 "$t ncftpget, firewall type 1 (USER user@host)"
  for m in on off; do
    dl "$t lftp ftp:proxy, passive $m" big.bin -- ip netns exec $C lftp -e "set net:max-retries 1; set net:timeout 15; set ftp:proxy ftp://$PX; set ftp:passive-mode $m; get big.bin -o $OUT; bye" ftp://$SRV_IP
  done
  # a file first fetched transparently, then through the proxy: a hit (and the other way round)
  cp "$WORK/pub/big.bin" "$WORK/pub/px1.bin"; cp "$WORK/pub/big.bin" "$WORK/pub/px2.bin"
  touch -d '1 hour ago' "$WORK/pub/px1.bin" "$WORK/pub/px2.bin"
  cdl "$t cache: transparent miss" miss "$WORK/pub/px1.bin" -- ip netns exec $C curl -sS -o "$OUT" ftp://$SRV_IP/px1.bin
  cdl "$t cache: hit through the proxy for the file fetched transparently" hit "$WORK/pub/px1.bin" -- ip netns exec $C $X userhost $PX $SRV_IP anonymous x pasv px1.bin "$OUT"
  cdl "$t cache: miss through the proxy" miss "$WORK/pub/px2.bin" -- ip netns exec $C $X userhost $PX $SRV_IP anonymous x port px2.bin "$OUT"
  cdl "$t cache: hit transparently for the file fetched through the proxy" hit "$WORK/pub/px2.bin" -- ip netns exec $C curl -sS -o "$OUT" ftp://$SRV_IP/px2.bin
  # load: 100 sessions through the proxy at once, all logged in, then all downloading (1 MB each:
  # 100 x 20 MB read by one Python process put this one kernel's TCP memory under pressure)
  local pid; pid=$(cat "$WORK/gate.pid")
  head -c 1048576 /dev/urandom >"$WORK/pub/pxload.bin"; touch -d '1 hour ago' "$WORK/pub/pxload.bin"
  if r=$(inC timeout 120 $X many $PX $SRV_IP 100 pxload.bin "$WORK/pub/pxload.bin" 2>&1); then
    pass "$t: 100 concurrent sessions, each a 1 MB download (half passive, half active): $r ok/failed, peak RSS $(awk '/VmHWM/ {print $2, $3}' /proc/$pid/status)"
  else
    fail "$t: 100 concurrent sessions: $r"
  fi
  busywait 5000 bash -c "inR() { ip netns exec $R \"\$@\"; }; inR '$BIN' status --cache-dir '$WORK/cache' | grep -q '^0 explicit proxy sessions'" &&
    pass "$t: every proxy session closed afterwards (status)" || fail "$t: proxy sessions left: $(inR "$BIN" status --cache-dir "$WORK/cache" | grep -A3 explicit)"
  # refusals: FTP replies a person can act on
  r=$(inC $X refused $PX "USER a@10.0.4.2" 2>&1) && [[ $r == 530*allow-dest* ]] &&
    pass "$t: destination outside --allow-dest refused ($r)" || fail "$t: destination outside --allow-dest: $r"
  r=$(inC $X refused $PX "USER a@10.0.2.1" 2>&1) && [[ $r == 530* ]] &&
    pass "$t: the gateway itself is never a destination ($r)" || fail "$t: gateway as destination: $r"
  r=$(inC $X refused $PX "USER a@no-such-host.invalid" 2>&1) && [[ $r == 421*Unknown\ host* ]] &&
    pass "$t: unknown host ($r)" || fail "$t: unknown host: $r"
  r=$(inC $X refused $PX "USER a@$SRV_IP:2" 2>&1) && [[ $r == 421*refused* ]] &&
    pass "$t: connection refused ($r)" || fail "$t: connection refused: $r"
  r=$(ip netns exec $P-thf $X greeting $PX 2>&1); [[ $r == 421* ]] &&
    pass "$t: client outside --allow-from refused ($r)" || fail "$t: client outside --allow-from: $r"
  grep -q "proxy 10.0.5.2:[0-9]*: refused" "$WORK/ftpgate.log" && pass "$t: refusals logged" || fail "$t: refusal not logged"
  gate_stop
  # proxy users: a proxy login first
  printf 'pw-of-bob\n' | "$BIN" proxy-passwd bob >"$WORK/proxy-users" || fail "$t: proxy-passwd"
  gate_start --listen $PX --proxy-users "$WORK/proxy-users" --allow-dest 10.0.2.0/24 || { fail "$t: ftpgate with --proxy-users did not start"; return; }
  dl "$t proxy login, SITE host" big.bin -- ip netns exec $C $X site $PX $SRV_IP bob pw-of-bob ftpuser ftppass pasv big.bin "$OUT"
  dl "$t proxy login, OPEN host" big.bin -- ip netns exec $C $X open $PX $SRV_IP bob pw-of-bob anonymous x port big.bin "$OUT"
  dl "$t USER proxyuser@host, then the server login" big.bin -- ip netns exec $C $X proxyat $PX $SRV_IP bob pw-of-bob ftpuser ftppass epsv big.bin "$OUT"
  ncftp_via_proxy 2 "$t ncftpget, firewall type 2 (proxy login, USER user@host)"
  ncftp_via_proxy 3 "$t ncftpget, firewall type 3 (proxy login, SITE host)"
  ncftp_via_proxy 4 "$t ncftpget, firewall type 4 (proxy login, OPEN host)"
  ncftp_via_proxy 6 "$t ncftpget, firewall type 6 (USER proxyuser@host, then the server login)"
  dl "$t lftp ftp:proxy with proxy credentials" big.bin -- ip netns exec $C lftp -e "set net:max-retries 1; set net:timeout 15; set ftp:proxy ftp://bob:pw-of-bob@$PX; get big.bin -o $OUT; bye" ftp://ftpuser:ftppass@$SRV_IP
  r=$(inC $X refused $PX "SITE $SRV_IP" 2>&1)
  [[ $r == 530* ]] && pass "$t: no server without a proxy login ($r)" || fail "$t: server reached without proxy login: $r"
  r=$(inC timeout 60 $X badpass $PX bob 2>&1)
  read -r t1 t2 t3 _ <<<"$r"
  if awk -v a="$t1" -v b="$t2" -v c="$t3" 'BEGIN { exit !(a < 1 && b < 1 && c >= 1.9) }' && [[ $r == *421* ]]; then
    pass "$t: wrong proxy password refused; the third in a row slowed down, then closed ($r)"
  else
    fail "$t: wrong proxy passwords: $r"
  fi
  echo 'bob:not-a-hash' >"$WORK/bad-users"
  r=$(inR "$BIN" run --cache-dir "$WORK/cache" --queue 78 --listen 10.0.1.1:2122 --proxy-users "$WORK/bad-users" 2>&1); rc=$?
  [[ $rc != 0 && $r == *bad-users:1:*bob* ]] && pass "$t: a bad --proxy-users file is a clear error ($r)" || fail "$t: bad --proxy-users: rc=$rc $r"
  gate_stop
}

explicit_proxy_ipv6() { # topology label; the dual-stack vsftpd runs. Listeners on both families.
  local t="$1 explicit proxy" X="$SYSPY $HERE/proxyclient.py" P4=10.0.1.1:2121 P6="[fd00:1::1]:2121" m r
  gate_start --listen $P4 --listen $P6 --allow-from 10.0.1.0/24 --allow-from fd00:1::/64 --allow-dest 10.0.2.0/24 --allow-dest fd00:2::/64 ||
    { fail "$t: ftpgate with IPv6 listeners did not start"; return; }
  for m in pasv port epsv; do
    dl "$t IPv4 client, IPv6 server (USER user@[v6]), $m" big.bin -- ip netns exec $C $X userhost $P4 "[$SRV6]" ftpuser ftppass $m big.bin "$OUT"
  done
  for m in epsv eprt; do
    dl "$t IPv6 client, IPv4 server, $m" big.bin -- ip netns exec $C $X userhost $P6 $SRV_IP ftpuser ftppass $m big.bin "$OUT"
    dl "$t IPv6 client, IPv6 server, $m" big.bin -- ip netns exec $C $X userhost $P6 "[$SRV6]" ftpuser ftppass $m big.bin "$OUT"
  done
  grep -q 'EPSV sent to the IPv4 server as PASV' "$WORK/ftpgate.log" && grep -q 'PASV sent to the IPv6 server as EPSV' "$WORK/ftpgate.log" &&
    grep -Eq 'rewrote "EPRT \|2\|fd00:1::2\|[0-9]+\|" -> "PORT 10,0,2,1,' "$WORK/ftpgate.log" &&
    pass "$t: across the families PASV/EPSV and PORT/EPRT are translated (logged)" || fail "$t: no translation logged"
  dl "$t lftp ftp:proxy over IPv6 to an IPv4 server" big.bin -- ip netns exec $C lftp -e "set net:max-retries 1; set net:timeout 15; set ftp:proxy ftp://$P6; get big.bin -o $OUT; bye" ftp://$SRV_IP
  # a name with an AAAA record only, and one with both (the proxy's resolver: /etc/netns/ROUTER/hosts)
  mkdir -p /etc/netns/$R
  printf '%s v6only.ftpgate.test
%s dual.ftpgate.test
%s dual.ftpgate.test
' $SRV6 $SRV6 $SRV_IP >/etc/netns/$R/hosts
  gate_stop; gate_start --listen $P4 --listen $P6 --allow-from 10.0.1.0/24 --allow-from fd00:1::/64 --allow-dest 10.0.2.0/24 --allow-dest fd00:2::/64
  dl "$t a host with only an AAAA record, from an IPv4 client" big.bin -- ip netns exec $C $X userhost $P4 v6only.ftpgate.test anonymous x pasv big.bin "$OUT"
  dl "$t a host with both records" big.bin -- ip netns exec $C $X userhost $P4 dual.ftpgate.test anonymous x pasv big.bin "$OUT"
  grep -Eq 'connected to dual.ftpgate.test:21 \((10.0.2.2|\[fd00:2::2\]):21\)' "$WORK/ftpgate.log" &&
    pass "$t: the log says which address of the name was used ($(grep -Eo 'connected to dual.ftpgate.test:21 \([^)]*\)' "$WORK/ftpgate.log" | head -1))" ||
    fail "$t: the address used is not logged"
  rm -rf /etc/netns/$R
  r=$(inC $X refused $P6 "USER a@[fd00:4::2]" 2>&1) && [[ $r == 530*allow-dest* ]] &&
    pass "$t: an IPv6 destination outside --allow-dest refused ($r)" || fail "$t: IPv6 destination outside --allow-dest: $r"
  r=$(ip netns exec $P-thf $X greeting "[fd00:1::1]:2121" 2>&1); [[ $r == 421* ]] &&
    pass "$t: an IPv6 client outside --allow-from refused ($r)" || fail "$t: IPv6 client outside --allow-from: $r"
  gate_stop
}

for topo in $(topos nat); do
  setup $topo
  vsftpd_start
  explicit_proxy "$topo"
  server_stop; VSFTPD_DUAL=1 vsftpd_start
  explicit_proxy_ipv6 "$topo"
done
summary
