#!/usr/bin/env bash
# The appliance parts: rules apply/remove idempotent (iptables-nft and -legacy), one-line
# start-up errors, configuration file, metrics, xferlog, status (and its fallback socket),
# signals, the systemd unit, the packaged default configuration.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need vsftpd curl

appliance() { # topology label; vsftpd runs, ftpgate not. Issue 8: config, metrics, xferlog, status, signals
  local t="$1 appliance" m0=$WORK/m0 m1=$WORK/m1 m2=$WORK/m2 r rc n
  rm -rf "$WORK/cache"; rm -f "$WORK/xferlog"
  cp "$WORK/pub/big.bin" "$WORK/pub/px3.bin"; touch -d '1 hour ago' "$WORK/pub/px3.bin"
  cat >"$WORK/ftpgate.toml" <<EOC
cache-dir = "$WORK/cache"
metrics = "127.0.0.1:9121"
xferlog = "$WORK/xferlog"
EOC
  inR "$BIN" check-config --config "$WORK/ftpgate.toml" >/dev/null && pass "$t: check-config accepts the test config" ||
    fail "$t: check-config: $(inR "$BIN" check-config --config "$WORK/ftpgate.toml" 2>&1)"
  gate_start --config "$WORK/ftpgate.toml" || { fail "$t: ftpgate did not start from the config file"; return; }
  busywait 3000 scrape "$m0" || fail "$t: no metrics endpoint"
  cdl "$t: miss" miss "$WORK/pub/px3.bin" -- ip netns exec $C curl -sS -P - --disable-eprt -o "$OUT" ftp://$SRV_IP/px3.bin
  scrape "$m1"
  cdl "$t: hit" hit "$WORK/pub/px3.bin" -- ip netns exec $C curl -sS --disable-epsv -o "$OUT" ftp://$SRV_IP/px3.bin
  busywait 3000 bash -c "$(declare -f scrape inR metric); R=$R; scrape $m2; (( \$(metric $m2 'ftpgate_cache_served_bytes_total') > 0 ))"
  local size; size=$(stat -c %s "$WORK/pub/px3.bin")
  d() { echo $(( $(metric "$2" "$3") - $(metric "$1" "$3") )); }
  if [[ $(d $m0 $m1 'ftpgate_cache_requests_total{outcome="miss"}') == 1 && $(d $m1 $m2 'ftpgate_cache_requests_total{outcome="hit"}') == 1 &&
        $(d $m0 $m1 'ftpgate_relayed_bytes_total{direction="to_client"}') -ge $size &&
        $(d $m1 $m2 'ftpgate_cache_served_bytes_total') == "$size" &&
        $(d $m0 $m1 'ftpgate_rewrites_total{kind="PORT"}') -ge 1 &&
        $(d $m0 $m2 'ftpgate_sessions_total{mode="transparent",family="ipv4"}') -ge 2 &&
        $(d $m0 $m2 'ftpgate_data_transfers_total{mode="passive",result="ok"}') -ge 1 &&
        $(d $m0 $m2 'ftpgate_data_transfers_total{mode="active",result="ok"}') -ge 1 &&
        $(metric $m2 'ftpgate_cache_entries') -ge 1 && $(metric $m2 'ftpgate_cache_size_bytes') -ge $size ]]; then
    pass "$t: metrics move across a download and a cache hit (miss +1, hit +1, served +$size bytes)"
  else
    fail "$t: metrics: miss +$(d $m0 $m1 'ftpgate_cache_requests_total{outcome="miss"}') hit +$(d $m1 $m2 'ftpgate_cache_requests_total{outcome="hit"}') served +$(d $m1 $m2 'ftpgate_cache_served_bytes_total') relayed +$(d $m0 $m1 'ftpgate_relayed_bytes_total{direction="to_client"}') PORT +$(d $m0 $m1 'ftpgate_rewrites_total{kind="PORT"}') entries $(metric $m2 'ftpgate_cache_entries')"
  fi
  grep -q '^# TYPE ftpgate_queue_drops gauge' "$m2" && pass "$t: queue drop counters exported" || fail "$t: no queue drop metric"
  if (( $(metric $m2 'ftpgate_queue_verdict_seconds_count') > $(metric $m1 'ftpgate_queue_verdict_seconds_count') )) &&
     grep -q '^ftpgate_queue_waiting ' "$m2"; then
    pass "$t: verdict latency histogram ($(metric $m2 'ftpgate_queue_verdict_seconds_count') packets, $(metric $m2 'ftpgate_queue_verdict_seconds_sum') s) and queue depth exported"
  else
    fail "$t: no verdict latency / queue depth metrics"
  fi
  # an upload, then the transfer log: one classic line per file transfer
  inC curl -sS -T "$WORK/pub/small.txt" ftp://ftpuser:ftppass@$SRV_IP/up-x.txt || fail "$t: upload"
  # active mode with the cache on: an upload is not cacheable, so the kernel forwards it
  local mk big; mk=$(logmark); big=$(stat -c %s "$WORK/pub/big.bin")
  inC curl -sS -P - --disable-eprt -T "$WORK/pub/big.bin" ftp://ftpuser:ftppass@$SRV_IP/up-k.bin || fail "$t: active upload"
  busywait 3000 logsince "$mk" "data active .*\(kernel\): 0 bytes to client, $big bytes to server" && cmp -s "$WORK/home/up-k.bin" "$WORK/pub/big.bin" &&
    pass "$t: an active-mode upload with the cache on is forwarded by the kernel, its $big bytes counted exactly" ||
    fail "$t: active upload with the cache on: $(tail -n +$((mk + 1)) "$WORK/ftpgate.log" | grep 'data active' | tail -1)"
  busywait 3000 bash -c "(( \$(wc -l <'$WORK/xferlog') >= 4 ))"
  local k; k=$(awk -v s="$big" 'NF == 18 && $8 == s && $9 ~ /up-k.bin$/ && $12 == "i" && $18 == "c"' "$WORK/xferlog" | wc -l)
  n=$(awk -v s="$size" 'NF == 18 && $8 == s && $9 == "/px3.bin" && $10 == "b" && $12 == "o" && $13 == "a" && $15 == "ftp" && $18 == "c"' "$WORK/xferlog" | wc -l)
  r=$(awk 'NF == 18 && $9 ~ /up-x.txt$/ && $12 == "i" && $13 == "r" && $14 == "ftpuser" && $18 == "c"' "$WORK/xferlog" | wc -l)
  [[ $n == 2 && $r == 1 && $k == 1 && $(wc -l <"$WORK/xferlog") == 4 ]] && pass "$t: xferlog: one line per transfer ($(head -1 "$WORK/xferlog"))" ||
    fail "$t: xferlog ($n downloads, $r + $k uploads): $(cat "$WORK/xferlog")"
  # status: a logged-in session and a download in flight (server egress slowed down)
  inS tc qdisc add dev ${P}s0 root tbf rate 20mbit burst 32kb latency 400ms
  inC $SYSPY "$HERE/bench.py" idle $SRV_IP 1 6 >/dev/null 2>&1 &
  inC curl -sS -o /dev/null ftp://$SRV_IP/big.bin & local cpid=$!
  sleep 2.5
  r=$(inR "$BIN" status --cache-dir "$WORK/cache" 2>&1)
  if grep -Eq "^  10\.0\.1\.2:[0-9]+ -> 10\.0\.2\.2:21  user anonymous  logged in" <<<"$r" &&
     grep -Eq "RETR /big.bin  user anonymous  [1-9][0-9]* bytes to client" <<<"$r"; then
    pass "$t: status shows sessions and a transfer in flight"
  else
    fail "$t: status: $r"
  fi
  # SIGTERM lets the transfer in progress finish
  gate_stop_wait() { kill -TERM "$(cat "$WORK/gate.pid")"; wait "$(cat "$WORK/gate.pid")" 2>/dev/null; rm -f "$WORK/gate.pid"; }
  gate_stop_wait
  if wait $cpid && grep -q "letting 1 data transfers finish" "$WORK/ftpgate.log"; then
    pass "$t: SIGTERM waits for the transfer in progress, which completes"
  else
    fail "$t: SIGTERM drain: curl $? / $(grep SIGTERM "$WORK/ftpgate.log" | tail -2 | tr '\n' ' ')"
  fi
  inS tc qdisc del dev ${P}s0 root
  inR "$BIN" rules remove
  # SIGHUP: access rules of the explicit proxy re-read
  cat >"$WORK/ftpgate.toml" <<EOC
cache-dir = "$WORK/cache"
listen = ["10.0.1.1:2121"]
allow-from = ["10.0.5.0/24"]
EOC
  gate_start --config "$WORK/ftpgate.toml" || { fail "$t: ftpgate did not start"; return; }
  local X="$SYSPY $HERE/proxyclient.py"
  r=$(inC $X greeting 10.0.1.1:2121 2>&1)
  sed -i 's#10.0.5.0/24#10.0.1.0/24#' "$WORK/ftpgate.toml"
  kill -HUP "$(cat "$WORK/gate.pid")"
  busywait 3000 grep -q "SIGHUP: configuration re-read" "$WORK/ftpgate.log"
  local r2; r2=$(inC $X greeting 10.0.1.1:2121 2>&1)
  [[ $r == 421* && $r2 == 220* ]] && pass "$t: SIGHUP re-reads the access rules (421, then 220)" || fail "$t: SIGHUP: before '$r', after '$r2'"
  echo 'allow-from = ["10.0.1.0/33"]' >>"$WORK/ftpgate.toml"
  kill -HUP "$(cat "$WORK/gate.pid")"
  busywait 3000 grep -q "SIGHUP: configuration not reloaded" "$WORK/ftpgate.log" && kill -0 "$(cat "$WORK/gate.pid")" &&
    pass "$t: a bad config on SIGHUP is refused and the gateway keeps running" || fail "$t: bad config on SIGHUP"
  gate_stop
  # bad configuration files: one line naming file, line and key; nothing started
  printf 'cache-dir = "%s"\ncache-sise = "1G"\n' "$WORK/cache" >"$WORK/bad.toml"
  r=$(inR "$BIN" run --config "$WORK/bad.toml" 2>&1); rc=$?
  [[ $rc == 1 && $(wc -l <<<"$r") == 1 && $r == "ftpgate: error: config $WORK/bad.toml:2: unknown field \`cache-sise\`"* ]] &&
    pass "$t: unknown key: $r" || fail "$t: unknown key: rc=$rc $r"
  printf 'cache-dir = "%s"\n\ndata-timeout = "soon"\n' "$WORK/cache" >"$WORK/bad.toml"
  r=$(inR "$BIN" check-config --config "$WORK/bad.toml" 2>&1); rc=$?
  [[ $rc == 1 && $r == "ftpgate: error: config $WORK/bad.toml:3: data-timeout: "* ]] && pass "$t: bad value: $r" || fail "$t: bad value: rc=$rc $r"
  # the command line overrides the file
  printf 'cache-dir = "%s"\nqueue = 7\n' "$WORK/cache" >"$WORK/q.toml"
  r=$(inR "$BIN" rules show --config "$WORK/q.toml" --queue 9 | grep -c 'queue-num 9'); n=$(inR "$BIN" rules show --config "$WORK/q.toml" | grep -c 'queue-num 7')
  [[ $r == 8 && $n == 8 ]] && pass "$t: rules read the queue from the config; the command line overrides it" || fail "$t: config/CLI precedence ($r, $n)"
  # the systemd unit
  if command -v systemd-analyze >/dev/null; then
    mkdir -p "$WORK/unit"; sed "s#/usr/bin/ftpgate#$BIN#g" "$ROOT/dist/ftpgate.service" >"$WORK/unit/ftpgate.service"
    r=$(systemd-analyze verify --man=no "$WORK/unit/ftpgate.service" 2>&1) && pass "$t: systemd-analyze verify accepts the unit" ||
      fail "$t: systemd-analyze verify: $r"
  else
    echo "SKIP: $t: systemd-analyze not available"
  fi
  inR "$BIN" check-config --config "$ROOT/dist/ftpgate.toml" >/dev/null && pass "$t: the packaged default config is valid" || fail "$t: dist/ftpgate.toml invalid"
}

status_fallback() { # a cache directory that cannot hold the status socket (its path too long
  # for a Unix socket) does not stop run: the socket goes under /run/ftpgate, status finds it
  local long=$WORK/cache-$(printf 'x%.0s' {1..110}) r
  mkdir -p "$long"
  ip netns exec "$R" "$BIN" run --queue 78 --cache-dir "$long" >"$WORK/fallback.log" 2>&1 & local pid=$!
  busywait 3000 grep -q "bound NFQUEUE" "$WORK/fallback.log"
  r=$(inR "$BIN" status --cache-dir "$long" 2>&1)
  grep -q "status socket: .* listening on /run/ftpgate/" "$WORK/fallback.log" && [[ $r == *session* || $r == *ftpgate* ]] &&
    pass "status socket falls back to /run/ftpgate when the cache dir cannot hold it; status answers" ||
    fail "status fallback: $(tail -c 300 "$WORK/fallback.log" | tr '\n' ' ') / status: $r"
  kill -TERM $pid; wait $pid 2>/dev/null; rm -rf "$long"
}

rules_legacy() { # iptables-legacy as the system's iptables (both families): same idempotent apply/remove
  local ns=$P-lgy bin=$WORK/legacy-bin a b c
  mkdir -p "$bin"; ln -sf "$(command -v iptables-legacy)" "$bin/iptables"; ln -sf "$(command -v ip6tables-legacy)" "$bin/ip6tables"
  ip netns add $ns; ip -n $ns link set lo up
  ip netns exec $ns iptables-legacy -A FORWARD -m conntrack --ctstate INVALID -j DROP
  ip netns exec $ns ip6tables-legacy -A FORWARD -m conntrack --ctstate INVALID -j DROP
  lsave() { ip netns exec $ns iptables-legacy-save | grep '^-'; ip netns exec $ns ip6tables-legacy-save | grep '^-'; }
  count() { lsave | grep -c ftpgate; }
  local before; before=$(lsave)
  ip netns exec $ns env PATH="$bin:$PATH" "$BIN" rules apply && a=$(count)
  ip netns exec $ns env PATH="$bin:$PATH" "$BIN" rules apply && b=$(count)
  c=$( { ip netns exec $ns iptables-nft-save; ip netns exec $ns ip6tables-nft-save; } 2>/dev/null | grep -c ftpgate)
  ip netns exec $ns env PATH="$bin:$PATH" "$BIN" rules remove
  local after; after=$(lsave)
  [[ $a == 13 && $b == 13 && $c == 0 && "$before" == "$after" ]] &&
    pass "rules with iptables-legacy: apply twice = 8 IPv4 + 5 IPv6 rules, remove restores the rule set exactly" ||
    fail "rules with iptables-legacy: $a then $b rules (nft: $c); remove changed: $(diff <(echo "$before") <(echo "$after") | tr '\n' ' ')"
  ip netns del $ns
}

rules_idempotent() {
  local a b a6 b6 s1 s2 before after
  save() {
    inR iptables-save | grep '^-'; inR iptables -S | grep '^-P'; inR ip6tables-save | grep '^-'; inR ip6tables -S | grep '^-P'
    inR nft list tables; inR ip rule; inR ip -6 rule; inR ip -6 route show table all | grep -v 'proto kernel'
  }
  before=$(save)
  inR "$BIN" rules apply && a=$(inR iptables-save | grep -c ftpgate) a6=$(inR ip6tables-save | grep -c ftpgate) && s1=$(save)
  inR "$BIN" rules apply && b=$(inR iptables-save | grep -c ftpgate) b6=$(inR ip6tables-save | grep -c ftpgate) && s2=$(save)
  local t1; t1=$(inR nft list table ip ftpgate 2>/dev/null | grep -c 'data_pass')
  local r6; r6=$(inR ip -6 rule | grep -c 'lookup 2121')
  [[ $a == 8 && $b == 8 && $a6 == 5 && $b6 == 5 && $r6 == 1 && "$s1" == "$s2" && $t1 -ge 2 ]] &&
    pass "rules apply is idempotent ($a IPv4 rules, the nftables table, $a6 IPv6 rules and the ip -6 rule: the same set twice)" ||
    fail "rules apply twice: $a then $b IPv4 rules, $a6 then $b6 IPv6 rules, $r6 ip -6 rules (nft table: $t1 data_pass lines)"
  inR "$BIN" rules remove; inR "$BIN" rules remove
  a=$(inR iptables-save | grep -c ftpgate); a6=$(inR ip6tables-save | grep -c ftpgate); after=$(save)
  [[ $a == 0 && $a6 == 0 && "$before" == "$after" ]] && ! inR ip rule | grep -q 'lookup 2121' && ! inR ip -6 rule | grep -q 'lookup 2121' &&
    ! inR nft list table ip ftpgate >/dev/null 2>&1 &&
    pass "rules remove leaves none of ftpgate's rules and the router's own rules exactly as they were" ||
    fail "rules remove left $a ftpgate rules; changed: $(diff <(echo "$before") <(echo "$after") | tr '\n' ' ')"
}

for topo in $(topos nat routed); do
  setup $topo
  rules_idempotent
  [[ $topo == nat ]] || continue
  vsftpd_start
  gate_start --no-cache || fail "$topo ftpgate did not start"
  msg=$(inR "$BIN" run --cache-dir "$WORK/cache2" 2>&1 >/dev/null); rc=$?
  [[ $rc != 0 && $(wc -l <<<"$msg") == 1 && $msg == *"already bound"* ]] &&
    pass "second run on the same queue: one-line error ($msg)" || fail "second run on the same queue: rc=$rc: $msg"
  msg=$(inR "$BIN" run --queue 77 --cache-dir /proc/nonexistent 2>&1 >/dev/null); rc=$?
  [[ $rc != 0 && $(wc -l <<<"$msg") == 1 && $msg == *"cache dir"* ]] &&
    pass "unusable --cache-dir: one-line error ($msg)" || fail "unusable --cache-dir: rc=$rc: $msg"
  gate_stop
  appliance "$topo"
  status_fallback
  rules_legacy
done
summary
