"""Load generators for scripts/bench (run inside the client namespace).
  bench.py noop HOST N                 # N NOOPs on one session: prints p50 p99 in microseconds
  bench.py rate HOST CLIENTS SECONDS   # sessions/s of connect, login, PASV, LIST, QUIT; failures
  bench.py idle HOST N SECONDS         # N logged-in idle sessions held for SECONDS
"""
import ftplib, socket, sys, threading, time

def noop(host, n):
    s = socket.create_connection((host, 21)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = s.makefile("rb")
    def reply():
        l = f.readline()
        while l[3:4] == b"-":
            l = f.readline()
        return l
    reply()
    for c in (b"USER anonymous\r\n", b"PASS bench@\r\n"):
        s.sendall(c); reply()
    times = []
    for _ in range(n):
        t = time.perf_counter_ns()
        s.sendall(b"NOOP\r\n"); reply()
        times.append((time.perf_counter_ns() - t) / 1000)
    s.sendall(b"QUIT\r\n"); reply()
    times.sort()
    print(f"{times[len(times) // 2]:.0f} {times[int(len(times) * 0.99)]:.0f}")

def rate(host, clients, seconds):
    done, failed = [0], [0]
    stop = time.time() + seconds
    lock = threading.Lock()
    def worker():
        while time.time() < stop:
            try:
                f = ftplib.FTP(host, timeout=10); f.login(); f.set_pasv(True)
                f.retrlines("LIST", lambda _: None); f.quit()
                with lock: done[0] += 1
            except Exception:
                with lock: failed[0] += 1
    t0 = time.time()
    ts = [threading.Thread(target=worker) for _ in range(clients)]
    for t in ts: t.start()
    for t in ts: t.join()
    print(f"{done[0] / (time.time() - t0):.1f} {failed[0]}")

def idle(host, n, seconds):
    held, failed = [], 0
    for i in range(n):
        try:
            f = ftplib.FTP(host, timeout=20); f.login(); held.append(f)
        except Exception:
            failed += 1
        if i % 50 == 49:
            time.sleep(0.2)  # vsftpd's listener keeps up with paced connects
    print(f"{len(held)} {failed}", flush=True)
    time.sleep(seconds)
    for f in held:
        try: f.close()
        except Exception: pass

what = sys.argv[1]
if what == "noop": noop(sys.argv[2], int(sys.argv[3]))
elif what == "rate": rate(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
elif what == "idle": idle(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
else: raise SystemExit(__doc__)
