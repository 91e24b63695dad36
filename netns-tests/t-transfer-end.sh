#!/usr/bin/env bash
# The transfer's end (issue 19): the client never sees a transfer's final reply before its data
# connection is done, with every core busy; cache hits, relayed and kernel-forwarded downloads,
# listings and uploads in both modes.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need vsftpd curl lftp

# issue 19: the client never sees a transfer's final reply before its data connection is done.
# Every core kept busy by other processes, as on a loaded router (with one busy core the old race
# showed only now and then here; with all of them, 2-3 of 50 small active downloads failed);
# the kernel ALG's figures in the same run as INFO.
transfer_end() { # topology label; vsftpd runs, ftpgate not
  local t=$1 U=ftp://$SRV_IP hog n f
  head -c 50 /dev/urandom >"$WORK/pub/tiny.bin"; head -c 1048576 /dev/urandom >"$WORK/pub/mid.bin"
  touch -d '1 hour ago' "$WORK/pub/tiny.bin" "$WORK/pub/mid.bin"
  local hogs=() i
  for i in $(seq "$(nproc)"); do ( exec timeout 600 sh -c 'while :; do :; done' ) & hogs+=($!); done
  local PORT_C=(ip netns exec $C curl -sS -P - --disable-eprt -o "$OUT") PASV_C=(ip netns exec $C curl -sS --disable-epsv -o "$OUT")
  alg_start
  echo "INFO: $t kernel ALG, cores busy: curl PORT 1 MB x100: $(repeat 100 "$WORK/pub/mid.bin" -- "${PORT_C[@]}" $U/mid.bin) failed;" \
    "curl PORT 50 B x50: $(repeat 50 "$WORK/pub/tiny.bin" -- "${PORT_C[@]}" $U/tiny.bin) failed;" \
    "curl PASV 50 B x50: $(repeat 50 "$WORK/pub/tiny.bin" -- "${PASV_C[@]}" $U/tiny.bin) failed"
  alg_stop
  rm -rf "$WORK/cache"; gate_start
  cdl "$t transfer end: mid.bin miss" miss "$WORK/pub/mid.bin" -- "${PASV_C[@]}" $U/mid.bin
  n=$(repeat 100 "$WORK/pub/mid.bin" -- "${PORT_C[@]}" $U/mid.bin)
  [[ $n == 0 ]] && pass "$t transfer end, cores busy: 100 curl PORT cache hits, all complete" ||
    fail "$t transfer end: $n of 100 curl PORT cache hits failed ($(head -c 300 "$WORK/repeat.log" | tr '\n' ' '))"
  n=$(repeat 50 "$WORK/pub/mid.bin" -- "${PASV_C[@]}" $U/mid.bin)
  [[ $n == 0 ]] && pass "$t transfer end, cores busy: 50 curl PASV cache hits, all complete" ||
    fail "$t transfer end: $n of 50 curl PASV cache hits failed ($(head -c 300 "$WORK/repeat.log" | tr '\n' ' '))"
  gate_stop; gate_start --no-cache
  for m in PORT PASV; do
    local -n cmd=${m}_C
    n=$(repeat 50 "$WORK/pub/tiny.bin" -- "${cmd[@]}" $U/tiny.bin)
    [[ $n == 0 ]] && pass "$t transfer end, cores busy: 50 relayed curl $m downloads of 50 bytes" ||
      fail "$t transfer end: $n of 50 relayed curl $m downloads of 50 bytes failed ($(head -c 300 "$WORK/repeat.log" | tr '\n' ' '))"
  done
  local mode lmode fmode cmode
  for mode in active passive; do
    [[ $mode == active ]] && { lmode=off; fmode=port; cmode=(-P - --disable-eprt); } || { lmode=on; fmode=pasv; cmode=(--disable-epsv); }
    n=$(repeat 10 "$WORK/pub/tiny.bin" -- ip netns exec $C lftp -e "set net:max-retries 1; set net:timeout 15; set ftp:passive-mode $lmode; get tiny.bin -o $OUT; bye" $U)
    [[ $n == 0 ]] && pass "$t transfer end: 10 lftp $mode downloads of 50 bytes" || fail "$t transfer end: $n of 10 lftp $mode failed ($(head -c 300 "$WORK/repeat.log" | tr '\n' ' '))"
    n=$(repeat 10 "$WORK/pub/tiny.bin" -- ip netns exec $C $PY ftplib $SRV_IP $fmode tiny.bin "$OUT")
    [[ $n == 0 ]] && pass "$t transfer end: 10 ftplib $mode downloads of 50 bytes" || fail "$t transfer end: $n of 10 ftplib $mode failed ($(head -c 300 "$WORK/repeat.log" | tr '\n' ' '))"
    ls -A "$WORK/pub" | sort >"$WORK/dl/ls.want"
    f=0
    for i in $(seq 20); do
      inC curl -sS "${cmode[@]}" --list-only $U/ 2>"$WORK/case.log" | tr -d '\r' | sort >"$WORK/dl/ls.got" || f=$((f + 1))
      cmp -s "$WORK/dl/ls.got" "$WORK/dl/ls.want" || f=$((f + 1))
    done
    [[ $f == 0 ]] && pass "$t transfer end: 20 NLST listings in $mode mode, all complete" || fail "$t transfer end: $f of 20 $mode listings incomplete ($(head -c 200 "$WORK/case.log"))"
    f=0
    for i in $(seq 20); do
      rm -f "$WORK/home/up.bin"
      inC curl -sS "${cmode[@]}" -T "$WORK/pub/tiny.bin" ftp://ftpuser:ftppass@$SRV_IP/up.bin >"$WORK/case.log" 2>&1 &&
        cmp -s "$WORK/home/up.bin" "$WORK/pub/tiny.bin" || f=$((f + 1))
    done
    [[ $f == 0 ]] && pass "$t transfer end: 20 STOR uploads in $mode mode, all on the server" || fail "$t transfer end: $f of 20 $mode uploads failed ($(head -c 200 "$WORK/case.log"))"
  done
  local mark; mark=$(logmark)
  if inC $PY closedport $SRV_IP small.txt >"$WORK/case.log" 2>&1 && ! logsince "$mark" "WARN"; then
    pass "$t transfer end: client's data port closed: $(head -1 "$WORK/case.log"), logged at INFO"
  else
    fail "$t transfer end: closed data port ($(tr '\n' ' ' <"$WORK/case.log"); $(tail -n +$((mark + 1)) "$WORK/ftpgate.log" | grep WARN | head -2))"
  fi
  kill "${hogs[@]}" 2>/dev/null; wait "${hogs[@]}" 2>/dev/null
  gate_stop
}

for topo in $(topos nat); do
  setup $topo
  vsftpd_start
  transfer_end "$topo vsftpd"
done
summary
