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

for topo in $(topos nat); do
  setup $topo
  vsftpd_start
  explicit_proxy "$topo"
done
summary
