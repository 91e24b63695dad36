#!/usr/bin/env bash
# The download cache with vsftpd, pyftpdlib and proftpd: misses kept, hits served, stale and gone files,
# logins kept apart, size limits, a full disk, cache list/clear; a slow cache disk never holds
# the client (issue 14).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need vsftpd curl lftp wget fusermount3

slow_disk() { # topology label; vsftpd runs, ftpgate not. Issue 14: the cache directory on a
  # disk that writes ~40 MB/s (FUSE passthrough), the WAN at 1 Gbit/s: the miss goes at the
  # relay's speed, its capture is abandoned (no partial entry), the file is fetched again at the
  # disk's pace, and the next download is a hit; every download byte for byte
  local t=$1 U=ftp://$SRV_IP tn tm
  slowdisk_up || { fail "$t slow disk: FUSE mount failed ($(tail -c 200 "$WORK/slowfs.log"))"; slowdisk_down; return; }
  gate_start --no-cache
  tn=$(inC curl -sS -o "$OUT" -w '%{time_total}' $U/slow.bin) && cmp -s "$OUT" "$WORK/pub/slow.bin" ||
    fail "$t slow disk: --no-cache download"
  gate_stop; gate_start
  local mark; mark=$(logmark)
  tm=$(inC curl -sS -o "$OUT" -w '%{time_total}' $U/slow.bin) && cmp -s "$OUT" "$WORK/pub/slow.bin" &&
    pass "$t slow disk: the miss arrives byte for byte (${tm} s; --no-cache ${tn} s)" || fail "$t slow disk: the miss"
  busywait 5000 logsince "$mark" "not kept: cache disk too slow" && pass "$t slow disk: the capture was abandoned, not the client held" ||
    fail "$t slow disk: no 'cache disk too slow' ($(tail -n +$((mark + 1)) "$WORK/ftpgate.log" | grep -Eo '(not kept|kept).*' | head -1))"
  if inR "$BIN" cache list --cache-dir "$WORK/cache" | grep -q slow.bin; then
    fail "$t slow disk: an entry listed before the refetch completed"
  else
    pass "$t slow disk: no partial entry while the file is fetched again"
  fi
  busywait 60000 logsince "$mark" "cache refetch /slow.bin: .*; kept" && pass "$t slow disk: fetched again at the disk's pace and kept" ||
    fail "$t slow disk: refetch ($(tail -n +$((mark + 1)) "$WORK/ftpgate.log" | grep -Eo 'refetch.*' | head -1))"
  cdl "$t slow disk: the next download is a hit" hit "$WORK/pub/slow.bin" -- ip netns exec $C curl -sS -o "$OUT" $U/slow.bin
  gate_stop; slowdisk_down
}

check_verb() { # label mlst|mdtm mark: how ftpgate's freshness checks asked this server (log since mark)
  local said; said=$(tail -n +$(($3 + 1)) "$WORK/ftpgate.log" | grep -Eo 'cache: [^ ]+ (answers checks with MLST|has no MLST)' | sort -u)
  if [[ $2 == mlst ]]; then
    [[ $said == *"answers checks with MLST" ]] && pass "$1 cache: the freshness checks ask one MLST (RFC 3659) instead of MDTM and SIZE" ||
      fail "$1 cache: checks did not use MLST (${said:-nothing logged})"
  else
    [[ $said == *"has no MLST" ]] && pass "$1 cache: a server without MLST is asked MDTM and SIZE" ||
      fail "$1 cache: the fallback to MDTM and SIZE (${said:-nothing logged})"
  fi
}

cache_tests() { # server label, mlst|mdtm; the server runs, ftpgate not
  local t="nat $1" U=ftp://$SRV_IP PYC="ip netns exec $C $PY" start; start=$(logmark)
  rm -rf "$WORK/cache"; gate_start
  # miss, then hits from other clients in other modes
  cdl "$t cache: first download is a miss and kept" miss "$WORK/pub/big.bin" -- ip netns exec $C curl -sS -o "$OUT" $U/big.bin
  cdl "$t cache: curl PORT hit" hit "$WORK/pub/big.bin" -- ip netns exec $C curl -sS -P - --disable-eprt -o "$OUT" $U/big.bin
  check_verb "$t" "$2" "$start"
  cdl "$t cache: curl EPSV hit" hit "$WORK/pub/big.bin" -- ip netns exec $C curl -sS -o "$OUT" $U/big.bin
  cdl "$t cache: lftp passive hit" hit "$WORK/pub/big.bin" -- ip netns exec $C lftp -e "set net:max-retries 1; set ftp:passive-mode on; get big.bin -o $OUT; bye" $U
  cdl "$t cache: lftp active hit" hit "$WORK/pub/big.bin" -- ip netns exec $C lftp -e "set net:max-retries 1; set ftp:passive-mode off; get big.bin -o $OUT; bye" $U
  cdl "$t cache: wget active hit" hit "$WORK/pub/big.bin" -- ip netns exec $C wget -q --no-passive-ftp -O "$OUT" $U/big.bin
  cdl "$t cache: ftplib miss (home-relative path)" miss "$WORK/pub/big.bin" -- $PYC ftplib $SRV_IP port big.bin "$OUT"
  cdl "$t cache: ftplib PASV hit" hit "$WORK/pub/big.bin" -- $PYC ftplib $SRV_IP pasv big.bin "$OUT"
  cdl "$t cache: busybox ftpget hit" hit "$WORK/pub/big.bin" -- ip netns exec $C busybox ftpget $SRV_IP "$OUT" big.bin
  cdl "$t cache: RETR typed one byte per segment, hit" hit "$WORK/pub/big.bin" -- $PYC typist $SRV_IP eprt big.bin "$OUT"
  cdl "$t cache: curl resumed download (REST) from a hit" hit "$WORK/pub/big.bin" -- bash -c "head -c 1000000 '$WORK/pub/big.bin' >'$OUT' && ip netns exec $C curl -sS -C - -o '$OUT' $U/big.bin"
  # never stale
  head -c 1048576 /dev/urandom >"$WORK/pub/rep.bin"; touch -d '1 hour ago' "$WORK/pub/rep.bin"
  cdl "$t cache: rep.bin miss" miss "$WORK/pub/rep.bin" -- ip netns exec $C curl -sS -o "$OUT" $U/rep.bin
  head -c 1048576 /dev/urandom >"$WORK/pub/rep.bin"; touch -d '1 minute ago' "$WORK/pub/rep.bin"
  cdl "$t cache: same-size file with a newer mtime is served fresh" stale "$WORK/pub/rep.bin" -- ip netns exec $C curl -sS -o "$OUT" $U/rep.bin
  cdl "$t cache: and the new copy is a hit" hit "$WORK/pub/rep.bin" -- ip netns exec $C curl -sS -P - -o "$OUT" $U/rep.bin
  head -c 1048576 /dev/urandom >"$WORK/pub/new.bin"
  cdl "$t cache: a file modified seconds ago is not kept" miss-notkept "$WORK/pub/new.bin" -- ip netns exec $C curl -sS -o "$OUT" $U/new.bin
  cp "$WORK/pub/rep.bin" "$WORK/pub/del.bin"; touch -d '1 hour ago' "$WORK/pub/del.bin"
  cdl "$t cache: del.bin miss" miss "$WORK/pub/del.bin" -- $PYC ftplib $SRV_IP pasv del.bin "$OUT"
  rm -f "$WORK/pub/del.bin" "$OUT"
  local mark; mark=$(logmark)
  if ! $PYC ftplib $SRV_IP pasv del.bin "$OUT" >"$WORK/case.log" 2>&1 && grep -q "550" "$WORK/case.log" && [[ ! -s $OUT ]] &&
     logsince "$mark" "RETR ~/del.bin: gone" && [[ $(listed del.bin) == 0 ]]; then
    pass "$t cache: a deleted file is not served (client gets the server's 550) and its entry is dropped"
  else
    fail "$t cache: deleted file ($(stat -c %s "$OUT" 2>/dev/null) bytes served; $(tail -1 "$WORK/case.log"); entries $(listed del.bin))"
  fi
  # logins: different files at the same path for anonymous and ftpuser
  head -c 1048576 /dev/urandom >"$WORK/pub/same.bin"; head -c 1048576 /dev/urandom >"$WORK/home/same.bin"
  chown ftpuser "$WORK/home/same.bin"; touch -d '1 hour ago' "$WORK/pub/same.bin" "$WORK/home/same.bin"
  cdl "$t cache: anonymous same.bin (PASV)" miss "$WORK/pub/same.bin" -- $PYC ftplib $SRV_IP pasv same.bin "$OUT"
  cdl "$t cache: ftpuser same.bin is its own (PORT)" miss "$WORK/home/same.bin" -- $PYC ftplib $SRV_IP port same.bin "$OUT" ftpuser ftppass
  cdl "$t cache: ftpuser same.bin hit (PASV)" hit "$WORK/home/same.bin" -- $PYC ftplib $SRV_IP pasv same.bin "$OUT" ftpuser ftppass
  cdl "$t cache: anonymous same.bin hit (PORT)" hit "$WORK/pub/same.bin" -- $PYC ftplib $SRV_IP port same.bin "$OUT"
  # an aborted download leaves no entry
  head -c 20971520 /dev/urandom >"$WORK/pub/abort.bin"; touch -d '1 hour ago' "$WORK/pub/abort.bin"
  mark=$(logmark)
  inC $PY abort $SRV_IP abort.bin >"$WORK/case.log" 2>&1
  if busywait 5000 logsince "$mark" "cache miss .*abort.bin.*not kept" && [[ $(listed abort.bin) == 0 ]] &&
     [[ -z $(ls -A "$WORK/cache/tmp") ]]; then
    pass "$t cache: an aborted download leaves no entry ($(tail -n +$((mark + 1)) "$WORK/ftpgate.log" | grep -o 'not kept.*'))"
  else
    fail "$t cache: aborted download ($(cat "$WORK/case.log"; ls "$WORK/cache/tmp"))"
  fi
  # two downloads of one uncached file at once: both correct, one entry
  mark=$(logmark)
  inC curl -sS -o "$WORK/dl/c1" $U/abort.bin & local p1=$!
  inC curl -sS -P - -o "$WORK/dl/c2" $U/abort.bin & local p2=$!
  wait $p1; local r1=$?; wait $p2; local r2=$?
  if [[ $r1 == 0 && $r2 == 0 ]] && cmp -s "$WORK/dl/c1" "$WORK/pub/abort.bin" && cmp -s "$WORK/dl/c2" "$WORK/pub/abort.bin" &&
     busywait 5000 logsince "$mark" "abort.bin.*; kept" && [[ $(listed abort.bin) == 1 ]]; then
    pass "$t cache: two concurrent downloads of one file, both correct, one entry"
  else
    fail "$t cache: concurrent downloads (rc $r1 $r2, entries $(listed abort.bin))"
  fi
  # restart keeps entries; eviction at the size limit (least recently used first)
  gate_stop; gate_start
  cdl "$t cache: entries survive a restart (hit)" hit "$WORK/pub/abort.bin" -- ip netns exec $C curl -sS -o "$OUT" $U/abort.bin
  gate_stop; gate_start --cache-max-bytes 30M
  cdl "$t cache: under a 30 MB limit big.bin (evicted at start) is a miss" miss "$WORK/pub/big.bin" -- ip netns exec $C curl -sS -o "$OUT" $U/big.bin
  local total; total=$(inR "$BIN" cache list --cache-dir "$WORK/cache" | tail -1)
  if [[ $(listed /big.bin) == 1 && $(listed abort.bin) == 0 ]] && (( $(awk '{print $3}' <<<"$total") <= 31457280 )); then
    pass "$t cache: size limit evicts the least recently used ($total)"
  else
    fail "$t cache: eviction ($(inR "$BIN" cache list --cache-dir "$WORK/cache" | tr '\n' ';'))"
  fi
  # a full cache disk: downloads pass uncached
  gate_stop; mkdir -p "$WORK/cache"; mount -t tmpfs -o size=4m ftpgate-test "$WORK/cache"
  gate_start
  cdl "$t cache: full cache disk, download passes uncached" miss-notkept "$WORK/pub/big.bin" -- ip netns exec $C curl -sS -o "$OUT" $U/big.bin
  gate_stop; umount "$WORK/cache"
  local n; n=$(inR "$BIN" cache clear --cache-dir "$WORK/cache"); [[ $(listed bin) == 0 ]] &&
    pass "$t cache clear ($n)" || fail "$t cache clear left entries"
}

proftpd_cache() { # proftpd runs, ftpgate not: its checks by MLST (mod_facts), hit, stale, gone
  local t="nat proftpd" U=ftp://$SRV_IP start; start=$(logmark)
  rm -rf "$WORK/cache"; gate_start
  head -c 1048576 /dev/urandom >"$WORK/pub/pro.bin"; touch -d '1 hour ago' "$WORK/pub/pro.bin"
  cdl "$t cache: miss and kept" miss "$WORK/pub/pro.bin" -- ip netns exec $C curl -sS -o "$OUT" $U/pro.bin
  cdl "$t cache: curl PASV hit" hit "$WORK/pub/pro.bin" -- ip netns exec $C curl -sS --disable-epsv -o "$OUT" $U/pro.bin
  cdl "$t cache: lftp active hit" hit "$WORK/pub/pro.bin" -- ip netns exec $C lftp -e "set net:max-retries 1; set ftp:passive-mode off; get pro.bin -o $OUT; bye" $U
  check_verb "$t" mlst "$start"
  head -c 1048576 /dev/urandom >"$WORK/pub/pro.bin"; touch -d '1 minute ago' "$WORK/pub/pro.bin"
  cdl "$t cache: same-size file with a newer mtime is served fresh" stale "$WORK/pub/pro.bin" -- ip netns exec $C curl -sS -o "$OUT" $U/pro.bin
  # ftplib names the file relative to the login's home (its own key, as it never asks PWD)
  cdl "$t cache: ftplib miss and kept" miss "$WORK/pub/pro.bin" -- ip netns exec $C $PY ftplib $SRV_IP pasv pro.bin "$OUT"
  rm -f "$WORK/pub/pro.bin"
  local mark; mark=$(logmark)
  # ftplib sends its RETR at once (curl asks SIZE first and stops at its 550)
  if ! ip netns exec $C $PY ftplib $SRV_IP pasv pro.bin "$OUT" >"$WORK/case.log" 2>&1 && grep -q 550 "$WORK/case.log" && logsince "$mark" "RETR [^ ]*pro.bin: gone" && [[ $(listed '~/pro.bin') == 0 ]]; then
    pass "$t cache: a deleted file is not served and its entry is dropped (MLST's 550 checked with MDTM)"
  else
    fail "$t cache: deleted file ($(tail -1 "$WORK/case.log"); $(tail -n +$((mark + 1)) "$WORK/ftpgate.log" | grep -o 'RETR.*' | head -1); entries $(listed pro.bin))"
  fi
  gate_stop
}

for topo in $(topos nat); do
  setup $topo
  vsftpd_start
  slow_disk "$topo vsftpd"
  cache_tests vsftpd mdtm
  server_stop
  pyftpd_start
  cache_tests pyftpdlib mlst
  server_stop
  if [[ -x $PROFTPD ]]; then
    proftpd_start; proftpd_cache
  else
    skip "nat proftpd cache: proftpd is not unpacked (scripts/install-deps does it)"
  fi
done
summary
