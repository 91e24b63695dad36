#!/usr/bin/env bash
# The gateway's life: kill -9 in the middle of a session whose lengths changed (the restarted
# helper resumes it), fail-open while none runs, fail-closed (FTP control traffic dropped, other
# traffic not), SIGTERM, and the threads' real-time priorities.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need vsftpd curl

fail_closed() { # topology label; ftpgate not running, vsftpd runs
  local t=$1 rc
  inR "$BIN" rules apply --fail-closed || { fail "$t fail-closed: rules apply --fail-closed"; return; }
  ip netns exec $S "$SYSPY" "$HERE/listener.py" "$WORK/other.log" $SRV_IP 8080 >/dev/null 2>&1 &
  busywait 3000 inS bash -c "exec 3<>/dev/tcp/$SRV_IP/8080" 2>/dev/null
  rm -f "$OUT"
  inC timeout 10 curl -sS --connect-timeout 3 -o "$OUT" ftp://$SRV_IP/small.txt >"$WORK/case.log" 2>&1; rc=$?
  local other=no
  inC timeout 5 bash -c "exec 3<>/dev/tcp/$SRV_IP/8080" 2>>"$WORK/case.log" && busywait 3000 grep -q "from 10.0.[12]" "$WORK/other.log" && other=yes
  if [[ $rc != 0 && ! -s $OUT && $other == yes ]]; then
    pass "$t fail-closed: no ftpgate, FTP control traffic dropped (curl exit $rc), other TCP traffic passes"
  else
    fail "$t fail-closed: curl exit $rc, other traffic passed: $other ($(tail -c 300 "$WORK/case.log" | tr '\n' ' '); $(tr '\n' ' ' <"$WORK/other.log"))"
  fi
  inR "$BIN" rules remove --fail-closed
  [[ $(inR iptables-save | grep -c ftpgate) == 0 ]] && pass "$t fail-closed: rules remove --fail-closed removes them" ||
    fail "$t fail-closed: $(inR iptables-save | grep -c ftpgate) rules left"
}

for topo in $(topos nat routed); do
  setup $topo
  vsftpd_start
  gate_start || fail "$topo ftpgate did not start"
  if [[ $topo == nat ]]; then
    # kill -9 in the middle of a session whose PORT line grew when rewritten: the restarted
    # helper resumes its sequence offsets and the same session downloads again
    rm -f "$WORK"/sig.*
    inC $PY restart $SRV_IP small.txt "$WORK/pub/small.txt" "$WORK/sig" >"$WORK/case.log" 2>&1 & cpid=$!
    if busywait 10000 test -f "$WORK/sig.ready"; then
      gate_kill_keep_rules; gate_start; touch "$WORK/sig.go"
      if wait $cpid && grep -Eq "resumed [0-9]+ sessions" "$WORK/ftpgate.log"; then
        pass "$topo kill -9 mid-session after a length-changing rewrite: the same session downloads again"
      else
        fail "$topo kill -9 mid-session ($(tail -c 300 "$WORK/case.log" | tr '\n' ' '))"
      fi
    else
      kill $cpid; fail "$topo kill -9 mid-session: client not ready ($(tail -c 300 "$WORK/case.log"))"
    fi
  fi
  gate_kill_keep_rules
  if [[ $topo == nat ]]; then
    dl "$topo fail-open: passive download while no ftpgate runs" big.bin norelay -- ip netns exec $C curl -sS -o "$OUT" ftp://$SRV_IP/big.bin
    inR "$BIN" rules remove
    fail_closed "$topo"
  fi
  gate_start
  dl "$topo after restart: PORT download" big.bin -- ip netns exec $C curl -sS -P - --disable-eprt -o "$OUT" ftp://$SRV_IP/big.bin
  # the queue thread at real time 10, the relay's threads below it (5), not inheriting its 10
  # (a cache hit's sender drops to normal priority after its first 8 MiB: TS is fine too)
  inC curl -sS --limit-rate 4M -o /dev/null ftp://$SRV_IP/big.bin & cpid=$!
  sleep 1
  gpid=$(cat "$WORK/gate.pid")
  ps -L -o cls=,rtprio=,ni=,comm=,tid= -p "$gpid" >"$WORK/threads.txt"
  # each thread's CPUs: the real-time data threads keep off the first CPU (--data-cpus)
  while read -r _ _ _ _ tid; do
    echo "$tid $(awk '/^Cpus_allowed_list/ { print $2 }' "/proc/$gpid/task/$tid/status" 2>/dev/null)"
  done <"$WORK/threads.txt" >"$WORK/cpus.txt"
  kill $cpid 2>/dev/null; wait $cpid 2>/dev/null
  if awk '$4 == "ftpgate" && $1 == "FF" { q = 1 } $4 == "ftpgate-data" && $1 == "FF" { d++; if ($2 != 5) bad++ }
          END { exit !(q && d >= 1 && !bad) }' "$WORK/threads.txt"; then
    pass "$topo relay threads at real-time priority 5, below the queue thread's 10"
  else
    fail "$topo thread priorities: $(tr '\n' ';' <"$WORK/threads.txt")"
  fi
  # the CPUs this run may use (a cpuset need not start at 0), as the kernel lists them
  all=$(awk '/^Cpus_allowed_list/ { print $2 }' /proc/self/status)
  n=$(nproc)
  if ((n >= 2)); then
    # every CPU but the first, listed the kernel's way (ranges joined with '-'), and the first
    # of those
    read -r want first < <($SYSPY -c 'import os, itertools
c = sorted(os.sched_getaffinity(0))[1:]
runs = [[x for _, x in g] for _, g in itertools.groupby(enumerate(c), lambda t: t[1] - t[0])]
print(",".join(str(r[0]) if len(r) == 1 else "%d-%d" % (r[0], r[-1]) for r in runs), c[0])')
    # the queue thread keeps every CPU; each real-time data thread all but the first
    if awk -v want="$want" -v all="$all" 'NR == FNR { cpus[$1] = $2; next }
          $4 == "ftpgate" && $1 == "FF" { q = (cpus[$5] == all) }
          $4 == "ftpgate-data" && $1 == "FF" { d++; if (cpus[$5] != want) bad++ }
          END { exit !(q && d >= 1 && !bad) }' "$WORK/cpus.txt" "$WORK/threads.txt" &&
      grep -q "data threads at real-time priority keep to CPU $first" "$WORK/ftpgate.log"; then
      pass "$topo real-time relay threads keep to CPU $want, the queue thread to $all"
    else
      fail "$topo data threads' CPUs (want $want, queue thread $all): $(paste -d' ' "$WORK/threads.txt" "$WORK/cpus.txt" | tr '\n' ';')"
    fi
  else
    skip "$topo data threads' CPUs: one CPU"
  fi
  server_stop
  gate_stop
  grep -q "SIGTERM received; exiting" "$WORK/ftpgate.log" && pass "$topo SIGTERM ends ftpgate cleanly" || fail "$topo SIGTERM not handled"
  grep -q "queue thread at real-time priority 10 (SCHED_FIFO)" "$WORK/ftpgate.log" && pass "$topo queue thread runs at real-time priority" ||
    fail "$topo queue thread priority: $(grep -m1 'queue thread' "$WORK/ftpgate.log")"
  # a CPU the process may not use, and a list that is none: one clear line, nothing started
  out=$(inR timeout 5 "$BIN" run --cache-dir "$WORK/cache" --data-cpus 1000 2>&1); rc=$?
  [[ $rc != 0 && $rc != 124 && $out == *"data-cpus: CPU 1000 is not one this process may use"* ]] &&
    pass "$topo --data-cpus naming a CPU it may not use: refused" || fail "$topo --data-cpus 1000: rc $rc: $out"
  out=$(inR timeout 5 "$BIN" run --cache-dir "$WORK/cache" --data-cpus 2-1 2>&1); rc=$?
  [[ $rc != 0 && $rc != 124 && $out == *"expected \`all\` or a CPU list"* ]] &&
    pass "$topo --data-cpus 2-1: refused" || fail "$topo --data-cpus 2-1: rc $rc: $out"
done
summary
