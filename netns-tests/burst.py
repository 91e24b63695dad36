"""A burst of separate client processes, each: connect (+greeting), login, one PASV download,
QUIT. Prints failures, stalls, and p50/p90 of each phase and of the whole session.

  burst.py HOST FILE REF N [TIMEOUT]  # N processes started at once; FILE must equal REF
  burst.py one HOST FILE REF TIMEOUT  # (internal) one session; prints its phase times or the error
  burst.py peak PORT                  # (server namespace) until SIGTERM: the most TCP connections
                                      # to local PORT the server holds at once

The last line of a burst is machine-readable: "RESULT failed F stalled S connect P50 P90 login ...
(milliseconds)". A session stalls when it times out or any phase takes over STALL seconds.
"""
import ftplib, json, signal, subprocess, sys, time

STALL = 10.0
PHASES = ("connect", "login", "transfer", "quit", "session")

def one(host, name, ref, timeout):
    t0 = time.monotonic()
    t = {}
    phase = "connect"
    try:
        f = ftplib.FTP(timeout=timeout)
        f.connect(host); t["connect"] = time.monotonic() - t0
        phase = "login"; s = time.monotonic(); f.login(); t["login"] = time.monotonic() - s
        phase = "transfer"; s = time.monotonic(); got = []
        f.retrbinary("RETR " + name, got.append); t["transfer"] = time.monotonic() - s
        phase = "quit"; s = time.monotonic(); f.quit(); t["quit"] = time.monotonic() - s
        if b"".join(got) != open(ref, "rb").read():
            raise RuntimeError("content differs")
        t["session"] = time.monotonic() - t0
        print(json.dumps(t))
    except Exception as e:
        try:
            port = f.sock.getsockname()[1]  # to find the session in ftpgate's log
        except Exception:
            port = None
        print(json.dumps({"error": repr(e)[:200], "phase": phase, "after": time.monotonic() - t0, "port": port}))

def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(p * len(v)))] if v else float("nan")

def burst(host, name, ref, n, timeout):
    procs = [subprocess.Popen([sys.executable, __file__, "one", host, name, ref, str(timeout)],
                              stdout=subprocess.PIPE, text=True) for _ in range(n)]
    res = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout * 4 + 60)
        try:
            res.append(json.loads(out.strip().splitlines()[-1]))
        except Exception:
            res.append({"error": "no output", "phase": "?", "after": 0})
    errs = [r for r in res if "error" in r]
    ok = [r for r in res if "error" not in r]
    stalled = [r for r in errs if "timed out" in r["error"] or "timeout" in r["error"].lower()]
    stalled += [r for r in ok if any(r[k] > STALL for k in PHASES[:4])]
    print(f"sessions {n}, failed {len(errs)}, stalled {len(stalled)}")
    result = [f"failed {len(errs)}", f"stalled {len(stalled)}"]
    for k in PHASES:
        v = [r[k] for r in ok]
        print(f"  {k:9s} p50 {pct(v, .5) * 1000:8.1f} ms  p90 {pct(v, .9) * 1000:8.1f} ms  max {max(v, default=0) * 1000:8.1f} ms")
        result.append(f"{k} {pct(v, .5) * 1000:.1f} {pct(v, .9) * 1000:.1f}")
    kinds = {}
    for e in errs:
        k = f"{e['phase']}: {e['error'][:80]}"
        kinds[k] = kinds.get(k, 0) + 1
    for k, c in sorted(kinds.items(), key=lambda x: -x[1])[:5]:
        print(f"  {c} x {k}")
    for r in stalled:
        print(f"  stalled: {json.dumps(r)}")
    print("RESULT " + " ".join(result), flush=True)

def peak(port):
    """Counts the sessions the server holds on local PORT in /proc/net/tcp: ESTABLISHED (01)
    and CLOSE_WAIT (08); the listener, and connections the server already closed, are not."""
    best = [0]
    def stop(*_):
        print(best[0], flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    want = f":{port:04X}"
    live = {"01", "08"}
    while True:
        n = 0
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                p = line.split(None, 4)
                if p[1].endswith(want) and p[3] in live:
                    n += 1
        best[0] = max(best[0], n)
        time.sleep(0.02)

if __name__ == "__main__":
    if sys.argv[1] == "one":
        one(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]))
    elif sys.argv[1] == "peak":
        peak(int(sys.argv[2]))
    else:
        burst(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]),
              float(sys.argv[5]) if len(sys.argv) > 5 else 60.0)
