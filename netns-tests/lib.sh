# Shared helpers for the netns tests. Source it; set P (namespace prefix) first if you like.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BIN=${FTPGATE_BIN:-$ROOT/target/release/ftpgate}
P=${P:-fgt}
C=$P-cli R=$P-rtr S=$P-srv
WORK=${WORK:-/tmp/ftpgate-tests-$P}
SRV_IP=10.0.2.2 CLI_IP=10.0.1.2
SYSPY=/usr/bin/python3
inC() { ip netns exec "$C" "$@"; }
inR() { ip netns exec "$R" "$@"; }
inS() { ip netns exec "$S" "$@"; }

PASSED=0 FAILED=0
FAILS=()
pass() { PASSED=$((PASSED + 1)); echo "PASS: $*"; }
fail() { FAILED=$((FAILED + 1)); FAILS+=("$*"); echo "FAIL: $*"; }
summary() {
  for f in "${FAILS[@]}"; do echo "  failed: $f"; done
  echo "$PASSED passed, $FAILED failed"
  [[ $FAILED == 0 ]]
}

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
  id ftpuser >/dev/null 2>&1 || useradd -M -d "$WORK/home" -s /bin/bash ftpuser
  usermod -d "$WORK/home" ftpuser
  echo ftpuser:ftppass | chpasswd
  chown -R ftpuser "$WORK/home"
  # settled files: the cache keeps nothing modified within seconds of its download
  touch -d '1 hour ago' "$WORK"/pub/* "$WORK"/home/*
}

vsftpd_start() { # [ssl]
  local conf=$WORK/vsftpd.conf
  mkdir -p /var/run/vsftpd/empty
  cat >"$conf" <<EOC
listen=YES
listen_ipv6=NO
listen_address=$SRV_IP
anonymous_enable=YES
anon_root=$WORK/pub
no_anon_password=YES
local_enable=YES
write_enable=YES
local_umask=022
max_clients=5000
max_per_ip=${VSFTPD_MAX_PER_IP:-5000}
pasv_min_port=30000
pasv_max_port=30999
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

pyftpd_start() { # [foreign] [masq]
  ip netns exec "$S" "$SYSPY" "$HERE/pyftpd.py" "$SRV_IP" "$WORK/pub" "$WORK/home" "$@" >"$WORK/pyftpd.log" 2>&1 &
  echo $! >"$WORK/server.pid"
  busywait 5000 inS bash -c "exec 3<>/dev/tcp/$SRV_IP/21" 2>/dev/null
}

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
  ip netns exec "$S" /opt/ftpgate-tests/proftpd/usr/sbin/proftpd -n -c "$WORK/proftpd.conf" >"$WORK/proftpd.log" 2>&1 &
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

server_stop() {
  [[ -f $WORK/server.pid ]] && kill "$(cat "$WORK/server.pid")" 2>/dev/null
  inS pkill -f vsftpd 2>/dev/null; pkill -f "vsftpd $WORK" 2>/dev/null
  pkill -f "pyftpd.py $SRV_IP" 2>/dev/null; pkill -f "proftpd -n -c $WORK/" 2>/dev/null
  rm -f "$WORK/server.pid"; sleep 0.2
}

gate_start() { # extra run args...
  inR "$BIN" rules apply || return 1
  local n; n=$(grep -c "bound NFQUEUE" "$WORK/ftpgate.log" 2>/dev/null)
  # not through a shell function: $! must be ftpgate itself (ip netns exec execs it)
  ip netns exec "$R" "$BIN" run --cache-dir "$WORK/cache" "$@" >>"$WORK/ftpgate.log" 2>&1 &
  echo $! >"$WORK/gate.pid"
  # this start's own line, not an earlier one in the same log
  busywait 3000 bash -c "(( \$(grep -c 'bound NFQUEUE' '$WORK/ftpgate.log') > ${n:-0} ))"
}

gate_stop() {
  [[ -f $WORK/gate.pid ]] && kill -TERM "$(cat "$WORK/gate.pid")" 2>/dev/null && wait "$(cat "$WORK/gate.pid")" 2>/dev/null
  rm -f "$WORK/gate.pid"
  inR "$BIN" rules remove 2>/dev/null
}

gate_kill_keep_rules() {
  [[ -f $WORK/gate.pid ]] && kill -9 "$(cat "$WORK/gate.pid")" 2>/dev/null && wait "$(cat "$WORK/gate.pid")" 2>/dev/null
  rm -f "$WORK/gate.pid"
}

alg_start() { inR iptables -t raw -A PREROUTING -p tcp --dport 21 -j CT --helper ftp; }
alg_stop() { inR iptables -t raw -D PREROUTING -p tcp --dport 21 -j CT --helper ftp 2>/dev/null; }

wan_rx() { inR cat "/sys/class/net/${P}wan/statistics/rx_bytes"; }
logmark() { wc -l <"$WORK/ftpgate.log"; }
# logsince MARK PATTERN: the log gained a line matching PATTERN (extended regex) after MARK
logsince() { tail -n +$(($1 + 1)) "$WORK/ftpgate.log" | grep -Eq "$2"; }

relayed() { local n; n=$(grep -c "bytes to client" "$WORK/ftpgate.log" 2>/dev/null); echo "${n:-0}"; }
