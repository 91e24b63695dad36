"""A burst of separate client processes, each: connect (+greeting), login, one PASV download,
QUIT. Prints failures, and p50/p90 of each phase and of the whole session.

  burst.py HOST FILE REF N      # N processes started at once; FILE must equal REF
  burst.py one HOST FILE REF    # (internal) one session; prints its phase times or the error
"""
import ftplib, json, subprocess, sys, time

def one(host, name, ref):
    t0 = time.monotonic()
    t = {}
    try:
        f = ftplib.FTP(timeout=60)
        f.connect(host); t["connect"] = time.monotonic() - t0
        s = time.monotonic(); f.login(); t["login"] = time.monotonic() - s
        s = time.monotonic(); got = []
        f.retrbinary("RETR " + name, got.append); t["transfer"] = time.monotonic() - s
        s = time.monotonic(); f.quit(); t["quit"] = time.monotonic() - s
        if b"".join(got) != open(ref, "rb").read():
            raise RuntimeError("content differs")
        t["session"] = time.monotonic() - t0
        print(json.dumps(t))
    except Exception as e:
        print(json.dumps({"error": repr(e)[:200], "after": time.monotonic() - t0}))

def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(p * len(v)))] if v else float("nan")

def burst(host, name, ref, n):
    procs = [subprocess.Popen([sys.executable, __file__, "one", host, name, ref], stdout=subprocess.PIPE, text=True)
             for _ in range(n)]
    res = []
    for p in procs:
        out, _ = p.communicate(timeout=180)
        try:
            res.append(json.loads(out.strip().splitlines()[-1]))
        except Exception:
            res.append({"error": "no output"})
    errs = [r for r in res if "error" in r]
    ok = [r for r in res if "error" not in r]
    print(f"sessions {n}, failed {len(errs)}")
    for k in ("connect", "login", "transfer", "quit", "session"):
        v = [r[k] for r in ok]
        print(f"  {k:9s} p50 {pct(v, .5) * 1000:8.1f} ms  p90 {pct(v, .9) * 1000:8.1f} ms  max {max(v, default=0) * 1000:8.1f} ms")
    kinds = {}
    for e in errs:
        kinds[e["error"][:80]] = kinds.get(e["error"][:80], 0) + 1
    for k, c in sorted(kinds.items(), key=lambda x: -x[1])[:5]:
        print(f"  {c} x {k}")

if __name__ == "__main__":
    if sys.argv[1] == "one":
        one(*sys.argv[2:5])
    else:
        burst(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
