#!/usr/bin/env bash
# The operator's policy (issue 18): --deny-command, [[policy]] tables per server (deny,
# anonymous-only), SIGHUP switching a rule for new sessions, check-config on a bad table.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need vsftpd curl
SRV2=10.0.2.3

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
}

pyftpd_start_second() { # pyftpdlib on $SRV2 beside vsftpd
  ip netns exec "$S" "$SYSPY" "$HERE/pyftpd.py" "$SRV2" "$WORK/pub" "$WORK/home" >"$WORK/pyftpd2.log" 2>&1 &
  busywait 5000 inS bash -c "exec 3<>/dev/tcp/$SRV2/21" 2>/dev/null
}

for topo in $(topos nat); do
  setup $topo
  vsftpd_start
  policy_cases "$topo"
done
summary
