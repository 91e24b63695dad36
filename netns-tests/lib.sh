# Shared helpers for the netns tests (in the form of the kernel selftests' lib.sh). A scenario
# script (t-*.sh) sources it, calls `setup nat|routed` for each topology it runs in, and ends with
# `summary`. Namespaces, interfaces and the work directory are named after P, by default unique
# to the process, so two runs can share a machine; everything is torn down at exit (the work
# directory is kept when a case failed, or with KEEP=1).
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BIN=${FTPGATE_BIN:-$ROOT/target/release/ftpgate}
P=${P:-f$$}
C=$P-cli R=$P-rtr S=$P-srv
WORK=${WORK:-/tmp/ftpgate-tests-$P}
SRV_IP=10.0.2.2 CLI_IP=10.0.1.2
SRV6=fd00:2::2 CLI6=fd00:1::2
SYSPY=/usr/bin/python3
OUT=$WORK/dl/out
PY="$SYSPY $HERE/ftpclient.py"
# the topologies a scenario runs in: its own list, or TOPO=nat|routed for one
topos() { echo "${TOPO:-$*}"; }
inC() { ip netns exec "$C" "$@"; }
inR() { ip netns exec "$R" "$@"; }
inS() { ip netns exec "$S" "$@"; }

PASSED=0 FAILED=0
FAILS=()
pass() { PASSED=$((PASSED + 1)); echo "PASS: $*"; }
fail() { FAILED=$((FAILED + 1)); FAILS+=("$*"); echo "FAIL: $*"; }
skip() { echo "SKIP: $*"; }
summary() {
  if grep -q "panicked" "$WORK/ftpgate.log" 2>/dev/null; then fail "ftpgate panicked: $(grep -m1 panicked "$WORK/ftpgate.log")"; fi
  for f in "${FAILS[@]}"; do echo "  failed: $f"; done
  echo "$PASSED passed, $FAILED failed"
  [[ $FAILED == 0 ]]
}
# need CMD...: the scenario skips (and says which tool is missing) unless every CMD exists
need() {
  local c
  for c; do
    command -v "$c" >/dev/null 2>&1 || [[ -x $c ]] || { skip "$(basename "$0" .sh): $c is not installed"; summary; exit 0; }
  done
}
[[ $(id -u) == 0 ]] || { echo "run as root"; exit 1; }

# setup TOPO: fresh namespaces in topology nat|routed, the test files, no ftpgate yet
setup() {
  [[ -x $BIN ]] || { echo "missing $BIN (cargo build --release)"; exit 1; }
  cleanup_topo
  topo_up "$1"
  rm -rf "$WORK/dl" "$WORK/cache"
  make_files
}
cleanup_topo() { gate_stop; server_stop; topo_down; }
cleanup() {
  cleanup_topo
  if [[ $FAILED == 0 && -z ${KEEP:-} ]]; then rm -rf "$WORK"; else echo "work directory kept: $WORK"; fi
}
trap cleanup EXIT

# busywait TIMEOUT_MS CMD...: retry until CMD succeeds (kernel selftests' lib.sh style)
busywait() {
  local t=$1; shift
  local end=$(($(date +%s%3N) + t))
  until "$@"; do (($(date +%s%3N) > end)) && return 1; sleep 0.05; done
}

topo_up() { "$HERE/topo.sh" up "$1" "$P"; }
topo_down() { "$HERE/topo.sh" down "$P"; }

make_files() {
  mkdir -p "$WORK/pub" "$WORK/home" "$WORK/dl"
  chmod 755 "$WORK" "$WORK/pub"
  [[ -f $WORK/pub/big.bin ]] || head -c 20971520 /dev/urandom >"$WORK/pub/big.bin"
  printf 'hello through ftpgate\r\nsecond line\n' >"$WORK/pub/small.txt"
  cp "$WORK/pub/small.txt" "$WORK/pub/big.bin" "$WORK/home/" 2>/dev/null
  # one system user for every run; vsftpd's local_root (not the passwd home) puts each run's
  # sessions in its own $WORK/home
  id ftpuser >/dev/null 2>&1 || useradd -M -d "$WORK/home" -s /bin/bash ftpuser
  [[ -d ~ftpuser ]] || usermod -d "$WORK/home" ftpuser
  echo ftpuser:ftppass | chpasswd
  chown -R ftpuser "$WORK/home"
  # settled files: the cache keeps nothing modified within seconds of its download
  touch -d '1 hour ago' "$WORK"/pub/* "$WORK"/home/*
}

vsftpd_start() { # [ssl]; VSFTPD_DUAL=1: one listener on both families (listen_ipv6=YES on ::)
  local conf=$WORK/vsftpd.conf
  mkdir -p /var/run/vsftpd/empty
  local listen="listen=YES
listen_ipv6=NO
listen_address=$SRV_IP"
  [[ -n ${VSFTPD_DUAL:-} ]] && listen="listen=NO
listen_ipv6=YES"
  cat >"$conf" <<EOC
$listen
anonymous_enable=YES
anon_root=$WORK/pub
no_anon_password=YES
local_enable=YES
write_enable=YES
local_root=$WORK/home
local_umask=022
max_clients=5000
max_per_ip=${VSFTPD_MAX_PER_IP:-5000}
pasv_min_port=30000
pasv_max_port=${VSFTPD_PASV_MAX:-30999}
connect_from_port_20=YES
isolate_network=NO
isolate=NO
seccomp_sandbox=NO
secure_chroot_dir=/var/run/vsftpd/empty
pam_service_name=vsftpd
background=NO
EOC
  if [[ ${1:-} == ssl ]]; then
    [[ -f $WORK/cert.pem ]] || openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=ftpgate-test \
      -keyout "$WORK/cert.pem" -out "$WORK/cert.pem" >/dev/null 2>&1
    cat >>"$conf" <<EOC
ssl_enable=YES
rsa_cert_file=$WORK/cert.pem
allow_anon_ssl=YES
force_local_logins_ssl=NO
force_local_data_ssl=NO
force_anon_logins_ssl=NO
force_anon_data_ssl=NO
require_ssl_reuse=NO
EOC
  fi
  ip netns exec "$S" vsftpd "$conf" >"$WORK/vsftpd.log" 2>&1 &
  echo $! >"$WORK/server.pid"
  busywait 5000 inS bash -c "exec 3<>/dev/tcp/$SRV_IP/21" 2>/dev/null
}

pyftpd_start() { # [foreign] [masq]; PYFTPD_IP: its address (default $SRV_IP)
  local ip=${PYFTPD_IP:-$SRV_IP}
  ip netns exec "$S" "$SYSPY" "$HERE/pyftpd.py" "$ip" "$WORK/pub" "$WORK/home" "$@" >"$WORK/pyftpd.log" 2>&1 &
  echo $! >"$WORK/server.pid"
  busywait 5000 inS bash -c "exec 3<>/dev/tcp/$ip/21" 2>/dev/null
}

# proftpd, unpacked by scripts/install-deps (its package conflicts with vsftpd's)
PROFTPD=/opt/ftpgate-tests/proftpd/usr/sbin/proftpd
proftpd_start() { # Debian's proftpd with its per-address limit set like vsftpd's stock one
  cat >"$WORK/proftpd.conf" <<EOC
ServerType standalone
ServerName "ftpgate-test"
DefaultServer on
UseIPv6 off
DefaultAddress $SRV_IP
SocketBindTight on
Port 21
User nobody
Group nogroup
ScoreboardFile $WORK/proftpd.scoreboard
PidFile $WORK/proftpd.pid
WtmpLog off
DelayTable none
UseReverseDNS off
RequireValidShell off
MaxInstances 5000
MaxClientsPerHost ${PROFTPD_MAX_PER_HOST:-50}
PassivePorts 32000 32999
AllowOverwrite on
<Anonymous $WORK/pub>
  User ftp
  Group nogroup
  UserAlias anonymous ftp
  RequireValidShell off
  <Limit WRITE>
    DenyAll
  </Limit>
</Anonymous>
EOC
  ip netns exec "$S" "$PROFTPD" -n -c "$WORK/proftpd.conf" >"$WORK/proftpd.log" 2>&1 &
  echo $! >"$WORK/server.pid"
  busywait 5000 inS bash -c "exec 3<>/dev/tcp/$SRV_IP/21" 2>/dev/null
}

# slowdisk_up: the cache dir on a FUSE passthrough that writes ~40 MB/s (an SD card's pace), the
# server's link shaped to 1 Gbit/s, and a settled 100 MB pub/slow.bin; slowdisk_down undoes it
slowdisk_up() {
  [[ -f $WORK/pub/slow.bin ]] || head -c 104857600 /dev/urandom >"$WORK/pub/slow.bin"
  touch -d '1 hour ago' "$WORK/pub/slow.bin"
  rm -rf "$WORK/cache" "$WORK/slowroot"; mkdir -p "$WORK/cache" "$WORK/slowroot"
  $SYSPY "$HERE/slowfs.py" "$WORK/slowroot" "$WORK/cache" 40000000 >"$WORK/slowfs.log" 2>&1 &
  SLOWFS_PID=$!
  busywait 5000 mountpoint -q "$WORK/cache" || return 1
  inS tc qdisc add dev ${P}s0 root tbf rate 1gbit burst 1mb latency 50ms
}

slowdisk_down() {
  inS tc qdisc del dev ${P}s0 root 2>/dev/null
  fusermount3 -u "$WORK/cache" 2>/dev/null; wait "${SLOWFS_PID:-}" 2>/dev/null
  rm -rf "$WORK/slowroot" "$WORK/cache"
}

server_stop() { # every process in the server's namespace (this run's only), then its port is free
  ip netns pids "$S" 2>/dev/null | xargs -r kill 2>/dev/null
  busywait 3000 bash -c "[[ -z \$(ip netns pids $S 2>/dev/null) ]]" || ip netns pids "$S" 2>/dev/null | xargs -r kill -9 2>/dev/null
  rm -f "$WORK/server.pid"
}

gate_start() { # extra run args...; RULES_ARGS: extra `rules apply|remove` args
  inR "$BIN" rules apply ${RULES_ARGS:-} || return 1
  local n; n=$(grep -c "bound NFQUEUE" "$WORK/ftpgate.log" 2>/dev/null)
  # not through a shell function: $! must be ftpgate itself (ip netns exec execs it)
  # GATE_PIN: a command to run it under (the bench's router model: `taskset -c 1-N`)
  ip netns exec "$R" ${GATE_PIN:-} "$BIN" run --cache-dir "$WORK/cache" "$@" >>"$WORK/ftpgate.log" 2>&1 &
  echo $! >"$WORK/gate.pid"
  # this start's own line, not an earlier one in the same log
  busywait 3000 bash -c "(( \$(grep -c 'bound NFQUEUE' '$WORK/ftpgate.log') > ${n:-0} ))"
}

gate_stop() {
  [[ -f $WORK/gate.pid ]] && kill -TERM "$(cat "$WORK/gate.pid")" 2>/dev/null && wait "$(cat "$WORK/gate.pid")" 2>/dev/null
  rm -f "$WORK/gate.pid"
  inR "$BIN" rules remove ${RULES_ARGS:-} 2>/dev/null
}

gate_kill_keep_rules() {
  [[ -f $WORK/gate.pid ]] && kill -9 "$(cat "$WORK/gate.pid")" 2>/dev/null && wait "$(cat "$WORK/gate.pid")" 2>/dev/null
  rm -f "$WORK/gate.pid"
}

# the kernel's FTP ALG (nf_conntrack_ftp, nf_nat_ftp) on both families: the reference
alg_start() { inR iptables -t raw -A PREROUTING -p tcp --dport 21 -j CT --helper ftp && inR ip6tables -t raw -A PREROUTING -p tcp --dport 21 -j CT --helper ftp; }
alg_stop() {
  inR iptables -t raw -D PREROUTING -p tcp --dport 21 -j CT --helper ftp 2>/dev/null
  inR ip6tables -t raw -D PREROUTING -p tcp --dport 21 -j CT --helper ftp 2>/dev/null
}

wan_rx() { inR cat "/sys/class/net/${P}wan/statistics/rx_bytes"; }
logmark() { wc -l <"$WORK/ftpgate.log"; }
# logsince MARK PATTERN: the log gained a line matching PATTERN (extended regex) after MARK
# (not `tail | grep -q`: with pipefail, grep's early exit can kill tail with SIGPIPE and fail a match)
logsince() { grep -Eq "$2" <(tail -n +$(($1 + 1)) "$WORK/ftpgate.log"); }

relayed() { local n; n=$(grep -c "bytes to client" "$WORK/ftpgate.log" 2>/dev/null); echo "${n:-0}"; }

# dl NAME FILE [norelay] -- CMD...: CMD must write $OUT identical to the server's FILE, and the
# transfer must have gone through ftpgate's relay (unless "norelay").
dl() {
  local name=$1 file=$2 relay=yes; shift 2
  [[ $1 == norelay ]] && { relay=no; shift; }
  [[ $1 == -- ]] && shift
  rm -f "$OUT"
  local before; before=$(relayed)
  if ! timeout 60 "$@" >"$WORK/case.log" 2>&1; then
    fail "$name (exit $?: $(tail -c 300 "$WORK/case.log" | tr '\n' ' '))"; return
  fi
  if ! cmp -s "$OUT" "$WORK/pub/$file"; then fail "$name (file differs)"; return; fi
  if [[ $relay == yes ]]; then
    busywait 3000 bash -c "(( \$(grep -c 'bytes to client' '$WORK/ftpgate.log') > $before ))" ||
      { fail "$name (not relayed by ftpgate)"; return; }
  fi
  pass "$name"
}

# cdl NAME WANT FILE -- CMD...: CMD writes $OUT identical to FILE (a path), the log shows the
# download's cache outcome WANT (hit, miss, stale, gone), and a hit moved < 1 % of the file over
# the router's WAN interface. A miss must then be kept (or, with WANT "miss-notkept", not).
cdl() {
  local name=$1 want=$2 src=$3; shift 3
  [[ $1 == -- ]] && shift
  rm -f "$OUT"
  local mark w0 w size
  mark=$(logmark); w0=$(wan_rx)
  if ! timeout 60 "$@" >"$WORK/case.log" 2>&1; then
    fail "$name (exit $?: $(tail -c 300 "$WORK/case.log" | tr '\n' ' '))"; return
  fi
  w=$(($(wan_rx) - w0)); size=$(stat -c %s "$src")
  cmp -s "$OUT" "$src" || { fail "$name (file differs)"; return; }
  case $want in
    hit)
      busywait 3000 logsince "$mark" "cache hit .* bytes sent from the cache" || { fail "$name (no cache hit logged)"; return; }
      ((w * 100 < size)) || { fail "$name (hit moved $w WAN bytes for a $size-byte file)"; return; } ;;
    miss|stale)
      logsince "$mark" "RETR [^ ]+: $want\$" || { fail "$name (no '$want' logged)"; return; }
      busywait 5000 logsince "$mark" "(cache miss|cache refetch) .*; kept" || { fail "$name (not kept: $(tail -n +$((mark + 1)) "$WORK/ftpgate.log" | grep -o 'not kept.*'))"; return; } ;;
    miss-notkept)
      busywait 5000 logsince "$mark" "not kept" || { fail "$name (no 'not kept' logged)"; return; } ;;
  esac
  echo "INFO: $name: $(tail -n +$((mark + 1)) "$WORK/ftpgate.log" | grep -Eo '(bytes relayed|sent from the cache) in [0-9.]+ s' | head -1), WAN $w bytes"
  pass "$name"
}

listed() { inR "$BIN" cache list --cache-dir "$WORK/cache" | grep -c "$1"; }

# third_party_start / third_party_count: the listener on 10.0.4.2 (behind the server)
third_party_start() {
  : >"$WORK/third.log"
  ip netns exec $P-3rd "$SYSPY" "$HERE/listener.py" "$WORK/third.log" 10.0.4.2 25 7000 8080 >/dev/null 2>&1 &
  echo $! >"$WORK/third.pid"
  busywait 3000 inS bash -c "exec 3<>/dev/tcp/10.0.4.2/8080" 2>/dev/null  # reachable from the server
  busywait 3000 grep -q 8080 "$WORK/third.log"; : >"$WORK/third.log"
}
third_party_stop() { kill "$(cat "$WORK/third.pid")" 2>/dev/null; }

metric() { awk -v k="$2" '$1 == k { v = $2 } END { print v + 0 }' "$1"; }
scrape() { inR curl -sS -m 5 http://127.0.0.1:9121/metrics >"$1"; }

# repeat N NAME FILE -- CMD...: runs CMD N times; each must exit 0 and write $OUT identical to
# FILE. Prints the number of failures (the first failure's output goes to $WORK/repeat.log).
repeat() {
  local n=$1 src=$2 bad=0 i; shift 2; [[ $1 == -- ]] && shift
  : >"$WORK/repeat.log"
  for ((i = 0; i < n; i++)); do
    rm -f "$OUT"
    if ! timeout 30 "$@" >"$WORK/case.log" 2>&1 || ! cmp -s "$OUT" "$src"; then
      bad=$((bad + 1)); [[ -s $WORK/repeat.log ]] || { echo "run $i:"; cat "$WORK/case.log"; } >"$WORK/repeat.log"
    fi
  done
  echo $bad
}

ops() { # topology label [server address]: upload and file operations as ftpuser
  local t=$1 h=${2:-$SRV_IP}
  rm -rf "$WORK/home/sub"
  if timeout 60 ip netns exec $C $PY ops "$h" "$WORK/pub/big.bin" >"$WORK/case.log" 2>&1 &&
     cmp -s "$WORK/home/sub/moved.bin" "$WORK/pub/big.bin"; then
    pass "$t STOR, LIST, CWD, PWD, MKD, RNFR/RNTO, DELE"
  else
    fail "$t STOR, LIST, CWD, PWD, MKD, RNFR/RNTO, DELE ($(tail -c 300 "$WORK/case.log" | tr '\n' ' '))"
  fi
}
