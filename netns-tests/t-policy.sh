#!/usr/bin/env bash
# The operator's policy (issue 18): --deny-command, [[policy]] tables per server (deny,
# anonymous-only), SIGHUP switching a rule for new sessions, check-config on a bad table.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need vsftpd curl
SRV2=10.0.2.3 SRV3=10.0.2.4

policy_cases() { # topology label; vsftpd runs on $SRV_IP
  local t=$1 r
  # --deny-command STOR: the upload refused and absent on the server, a download goes on
  gate_start --no-cache --deny-command STOR --deny-command dele || { fail "$t ftpgate did not start"; return; }
  rm -f "$WORK/home/denied-upload.bin"
  dl "$t --deny-command STOR: upload refused with 550, then a download on the same session" big.bin -- \
    ip netns exec $C $PY denied $SRV_IP STOR big.bin "$OUT"
  [[ ! -e $WORK/home/denied-upload.bin ]] && pass "$t --deny-command STOR: nothing reached the server" || fail "$t denied upload exists on the server"
  dl "$t --deny-command DELE (given in lower case)" big.bin -- ip netns exec $C $PY denied $SRV_IP "DELE big.bin" big.bin "$OUT"
  [[ -e $WORK/home/big.bin ]] && pass "$t the file DELE named is still there" || fail "$t DELE reached the server"
  grep -q 'refused: STOR is not allowed through this gateway' "$WORK/ftpgate.log" && pass "$t the denial is logged" || fail "$t denial not logged"
  gate_stop
  # [[policy]]: the second server denied, the first anonymous-only
  inS ip addr add $SRV2/24 dev ${P}s0
  PYFTPD_IP=$SRV2 pyftpd_start_second
  cat >"$WORK/policy.toml" <<EOC
cache-dir = "$WORK/cache"
[[policy]]
servers = ["$SRV2/32"]
action = "deny"
[[policy]]
servers = ["$SRV_IP/32"]
anonymous-only = true
EOC
  inR "$BIN" check-config --config "$WORK/policy.toml" >/dev/null && pass "$t check-config accepts the [[policy]] tables" ||
    fail "$t check-config: $(inR "$BIN" check-config --config "$WORK/policy.toml" 2>&1)"
  gate_start --config "$WORK/policy.toml" || { fail "$t ftpgate with [[policy]] did not start"; return; }
  r=$(inC $PY login $SRV2 anonymous x 2>&1); [[ $r == 421* ]] &&
    pass "$t [[policy]] deny: the client gets 421 ($r)" || fail "$t [[policy]] deny: $r"
  ! grep -q "USER" "$WORK/pyftpd2.log" && pass "$t [[policy]] deny: the server saw no login" || fail "$t denied server saw a login"
  r=$(inC $PY login $SRV_IP ftpuser ftppass 2>&1); [[ $r == 530*anonymous* ]] &&
    pass "$t [[policy]] anonymous-only: ftpuser refused ($r)" || fail "$t anonymous-only: $r"
  dl "$t [[policy]] anonymous-only: anonymous downloads" big.bin -- ip netns exec $C curl -sS -o "$OUT" ftp://$SRV_IP/big.bin
  # SIGHUP: the deny rule becomes an allow for new sessions
  sed -i 's/action = "deny"/action = "allow"/' "$WORK/policy.toml"
  local m; m=$(logmark)
  kill -HUP "$(cat "$WORK/gate.pid")"
  busywait 3000 logsince "$m" "SIGHUP: configuration re-read"
  dl "$t SIGHUP: the rule switched to allow, the second server now reached" small.txt -- ip netns exec $C curl -sS -o "$OUT" ftp://$SRV2/small.txt
  gate_stop
  # a bad table: one line naming file, line and key
  printf 'cache-dir = "%s"\n[[policy]]\nservers = ["10.0.2.0/24"]\nmode = "x"\n' "$WORK/cache" >"$WORK/badpolicy.toml"
  r=$(inR "$BIN" check-config --config "$WORK/badpolicy.toml" 2>&1); local rc=$?
  [[ $rc != 0 && $r == *badpolicy.toml:4* && $r == *mode* ]] && pass "$t a bad [[policy]] key is a clear error ($r)" || fail "$t bad [[policy]]: rc=$rc $r"
  printf 'cache-dir = "%s"\n[[policy]]\ndeny-commands = ["ST0R"]\n' "$WORK/cache" >"$WORK/badpolicy.toml"
  r=$(inR "$BIN" check-config --config "$WORK/badpolicy.toml" 2>&1); rc=$?
  [[ $rc != 0 && $r == *ST0R* ]] && pass "$t a bad command name is a clear error ($r)" || fail "$t bad command: rc=$rc $r"
  printf 'cache-dir = "%s"\n[[policy]]\nservers = ["10.0.2.0/24"]\nrate-down = "fast"\n' "$WORK/cache" >"$WORK/badpolicy.toml"
  r=$(inR "$BIN" check-config --config "$WORK/badpolicy.toml" 2>&1); rc=$?
  [[ $rc != 0 && $r == *badpolicy.toml:4* && $r == *rate-down* ]] && pass "$t a bad rate in a [[policy]] is a clear error ($r)" || fail "$t bad rate: rc=$rc $r"
  printf 'cache-dir = "%s"\n[[policy]]\nserver-mode = "sideways"\n' "$WORK/cache" >"$WORK/badpolicy.toml"
  r=$(inR "$BIN" check-config --config "$WORK/badpolicy.toml" 2>&1); rc=$?
  [[ $rc != 0 && $r == *badpolicy.toml:3* && $r == *server-mode* ]] && pass "$t a bad server-mode in a [[policy]] is a clear error ($r)" || fail "$t bad server-mode: rc=$rc $r"
}

data_ports() { # topology label: every port ftpgate chooses lies in --data-ports
  local t=$1 args m ports bad
  for args in "--no-cache" ""; do
    gate_start --data-ports 50000-50100 $args --listen 10.0.1.1:2121 --allow-from 10.0.1.0/24 || { fail "$t ftpgate with --data-ports did not start"; return; }
    m=$(logmark)
    dl "$t --data-ports ${args:-(cache)}: curl PORT" big.bin -- ip netns exec $C curl -sS -P - --disable-eprt -o "$OUT" ftp://$SRV_IP/big.bin
    dl "$t --data-ports ${args:-(cache)}: curl EPRT" big.bin -- ip netns exec $C curl -sS -P - -o "$OUT" ftp://$SRV_IP/big.bin
    dl "$t --data-ports ${args:-(cache)}: through the explicit proxy, PASV" big.bin -- \
      ip netns exec $C $SYSPY $HERE/proxyclient.py userhost 10.0.1.1:2121 $SRV_IP anonymous x pasv big.bin "$OUT"
    # the announced ports: PORT p1,p2 and EPRT |1|a|p| towards the server, 227 from the proxy
    ports=$(tail -n +$((m + 1)) "$WORK/ftpgate.log" | grep -Eo 'rewrote "[^"]*" -> "[^"]*"' | sed 's/.*-> "//; s/"$//' |
      awk -F'[,|() ]+' '/^PORT/ { print $6 * 256 + $7 } /^EPRT/ { print $4 } /^227/ { s = $0; sub(/.*\(/, "", s); sub(/\).*/, "", s); split(s, a, ","); print a[5] * 256 + a[6] }')
    bad=$(awk '$1 < 50000 || $1 > 50100' <<<"$ports" | wc -l)
    [[ -n $ports && $bad == 0 && $(wc -l <<<"$ports") -ge 3 ]] &&
      pass "$t --data-ports ${args:-(cache)}: every announced port in 50000-50100 ($(tr '\n' ' ' <<<"$ports"))" ||
      fail "$t --data-ports ${args:-(cache)}: ports $(tr '\n' ' ' <<<"$ports")"
    gate_stop
  done
}

# within LOW HIGH SECONDS: LOW <= SECONDS <= HIGH
within() { awk -v l="$1" -v h="$2" -v s="$3" 'BEGIN { exit !(s != "" && s >= l && s <= h) }'; }

rate_cases() { # topology label; pyftpdlib on $SRV2 (it answers NOOP during a transfer), vsftpd on $SRV_IP
  local t=$1 r secs noops slowest i m t0 a b
  gate_start --rate-down 8M --rate-up 8M --listen 10.0.1.1:2121 --allow-from 10.0.1.0/24 || { fail "$t ftpgate with --rate-down did not start"; return; }
  for i in "a download" "the same again (a cache hit)"; do
    rm -f "$OUT"; m=$(logmark)
    r=$(timeout 30 ip netns exec $C $PY paced $SRV2 pasv big.bin "$OUT" 2>&1)
    read -r secs noops slowest _ <<<"$r"
    # (during a hit the server's 226 came before the first byte and is held until the paced
    # bytes are delivered: the NOOPs' replies go ahead of it)
    if cmp -s "$OUT" "$WORK/pub/big.bin" && within 2 3.2 "$secs" && within 0 50 "$slowest" && ((noops >= 10)); then
      pass "$t --rate-down 8M, 20 MiB, $i: $secs s; $noops NOOPs on the same session meanwhile, the slowest $slowest ms (${r#*(})"
    else
      fail "$t --rate-down 8M, $i: $r"
    fi
  done
  logsince "$m" "cache hit .*big.bin" && pass "$t --rate-down: the second download was a cache hit" || fail "$t --rate-down: no cache hit"
  # the same hit through the explicit proxy, twice: its replies go ahead of the held 226 there
  # too, and the server's 150, when it came in the same read as the 226 (pyftpdlib answers a
  # hit's empty transfer at once), goes on before it (it was held with the 226 in about 1 run
  # in 4: the client waits for the 150 before it reads, so the hit stalled ~10 s)
  for i in 1 2; do
    rm -f "$OUT"; m=$(logmark)
    r=$(timeout 30 ip netns exec $C $PY paced $SRV2 pasv big.bin "$OUT" 10.0.1.1:2121 2>&1)
    read -r secs noops slowest _ <<<"$r"
    if cmp -s "$OUT" "$WORK/pub/big.bin" && within 2 3.2 "$secs" && within 0 50 "$slowest" && ((noops >= 10)) && logsince "$m" "cache hit .*big.bin"; then
      pass "$t --rate-down 8M through the explicit proxy, a cache hit ($i): $secs s; $noops NOOPs meanwhile, the slowest $slowest ms"
    else
      fail "$t --rate-down 8M through the explicit proxy, a cache hit ($i): $r"
    fi
  done
  # a server that sends a hit's 150 and 226 in one segment (pyftpdlib made to, on $SRV3): the
  # 150 may not wait with the 226 for the data (the client reads only after the 150; it did,
  # and the hit stalled until the hold's no-progress step: 10 s and more)
  inS ip addr add $SRV3/24 dev ${P}s0
  ip netns exec "$S" "$SYSPY" "$HERE/pyftpd.py" "$SRV3" "$WORK/pub" "$WORK/home" coalesce >"$WORK/pyftpd3.log" 2>&1 &
  busywait 5000 inS bash -c "exec 3<>/dev/tcp/$SRV3/21" 2>/dev/null
  # the misses that make the entries (curl's path is /big.bin, ftplib's ~/big.bin: no PWD)
  inC curl -sS -o /dev/null ftp://$SRV3/big.bin
  timeout 30 ip netns exec $C $PY paced $SRV3 pasv big.bin "$OUT" 10.0.1.1:2121 >/dev/null 2>&1
  for i in "curl, EPSV" "ftplib paced, PASV, through the explicit proxy"; do
    rm -f "$OUT"; m=$(logmark); r=
    if [[ $i == curl* ]]; then
      secs=$(inC curl -sS -o "$OUT" -w '%{time_total}' ftp://$SRV3/big.bin 2>&1)
    else
      r=$(timeout 30 ip netns exec $C $PY paced $SRV3 pasv big.bin "$OUT" 10.0.1.1:2121 2>&1); secs=${r%% *}
    fi
    if cmp -s "$OUT" "$WORK/pub/big.bin" && within 2 3.2 "$secs" && logsince "$m" "cache hit .*big.bin"; then
      pass "$t --rate-down 8M, a cache hit whose 150 and 226 came in one segment ($i): $secs s"
    else
      fail "$t --rate-down 8M, a cache hit whose 150 and 226 came in one segment ($i): ${r:-$secs}"
    fi
  done
  pkill -f "pyftpd.py $SRV3"; inS ip addr del $SRV3/24 dev ${P}s0
  # one host's two sessions at once share one limit: 40 MiB at 8 MiB/s
  t0=$(date +%s%N)
  inC curl -sS -o "$OUT.a" ftp://$SRV_IP/big.bin & a=$!
  inC curl -sS -o "$OUT.b" ftp://$SRV2/big.bin & b=$!
  wait $a && wait $b && cmp -s "$OUT.a" "$WORK/pub/big.bin" && cmp -s "$OUT.b" "$WORK/pub/big.bin"; r=$?
  secs=$(awk -v n=$(($(date +%s%N) - t0)) 'BEGIN { printf "%.3f", n / 1e9 }')
  ((r == 0)) && within 4.2 6.4 "$secs" && pass "$t --rate-down 8M: two sessions of one host share the limit (2 x 20 MiB in $secs s)" ||
    fail "$t --rate-down 8M: two sessions of one host took $secs s (rc $r)"
  # --rate-up: an upload through the relay
  rm -f "$WORK/home/paced-up.bin"; t0=$(date +%s%N)
  inC curl -sS -T "$WORK/pub/big.bin" ftp://ftpuser:ftppass@$SRV_IP/paced-up.bin; r=$?
  secs=$(awk -v n=$(($(date +%s%N) - t0)) 'BEGIN { printf "%.3f", n / 1e9 }')
  ((r == 0)) && cmp -s "$WORK/home/paced-up.bin" "$WORK/pub/big.bin" && within 2 3.2 "$secs" &&
    pass "$t --rate-up 8M: a 20 MiB upload in $secs s, identical on the server" || fail "$t --rate-up 8M: $secs s (rc $r)"
  gate_stop
  r=$(inR "$BIN" run --cache-dir "$WORK/cache" --rate-down 0 2>&1); [[ $? != 0 && $r == *rate* ]] &&
    pass "$t --rate-down 0 is a clear error ($r)" || fail "$t --rate-down 0: $r"
}

data_ports_full() { # topology label: a range of one port, taken by a waiting session: 425, then free again
  local t=$1 r sig=$WORK/full
  gate_start --data-ports 50000-50000 || { fail "$t ftpgate with --data-ports 50000-50000 did not start"; return; }
  rm -f "$sig".*
  inC $PY portwait $SRV_IP big.bin "$OUT.w" "$sig" >"$WORK/wait.log" 2>&1 & local w=$!
  busywait 5000 test -s "$sig.ep"
  r=$(inC $PY portreply $SRV_IP 2>&1)
  [[ $r == 425* ]] && pass "$t --data-ports: the range taken, a second PORT gets 425 ($r)" || fail "$t --data-ports full: $r"
  touch "$sig.go"; wait $w
  cmp -s "$OUT.w" "$WORK/pub/big.bin" && pass "$t --data-ports: the session holding the port downloads" || fail "$t --data-ports: waiting session ($(tail -c 200 "$WORK/wait.log"))"
  dl "$t --data-ports: the port free again, curl PORT downloads" big.bin -- ip netns exec $C curl -sS -P - --disable-eprt -o "$OUT" ftp://$SRV_IP/big.bin
  gate_stop
}

pyftpd_start_second() { # pyftpdlib on $SRV2 beside vsftpd
  ip netns exec "$S" "$SYSPY" "$HERE/pyftpd.py" "$SRV2" "$WORK/pub" "$WORK/home" >"$WORK/pyftpd2.log" 2>&1 &
  busywait 5000 inS bash -c "exec 3<>/dev/tcp/$SRV2/21" 2>/dev/null
}

for topo in $(topos nat); do
  setup $topo
  vsftpd_start
  data_ports "$topo"
  data_ports_full "$topo"
  policy_cases "$topo"
  rate_cases "$topo"
done
summary
