"""Small FTP clients for the netns tests.

  ftpclient.py typist HOST MODE FILE OUT [nagle|nodelay [SECONDS]]
                                           # every command sent one byte at a time (default TCP_NODELAY, 2 ms apart)
  ftpclient.py pipeline HOST FILE OUT      # "TYPE I\\r\\nPASV\\r\\n" in one segment
  ftpclient.py ftplib HOST MODE FILE OUT [USER PASS]   # Python ftplib, MODE pasv|port
  ftpclient.py abort HOST FILE             # reads 256 KiB of a download, then ABOR and close
  ftpclient.py bounce HOST FILE OUT [TARGET]  # PORT/EPRT naming TARGET (and port 25) must get 5xx
  ftpclient.py pasvwait HOST FILE OUT SIG  # PASV, writes the endpoint to SIG.ep, waits for
                                           # SIG.go, then connects and downloads
  ftpclient.py limits HOST N M             # N sessions fit, the next gets 421; M PASV fit, the next 425
  ftpclient.py load HOST FILE REF N STALLED  # N concurrent sessions download FILE (== REF), while
                                           # STALLED clients open a download and never read
  ftpclient.py restart HOST FILE REF SIG   # active download from data port 1030 (the PORT line
                                           # grows when rewritten), creates SIG.ready, waits for
                                           # SIG.go, then active (port 1031) and passive downloads
                                           # on the same session
  ftpclient.py ops HOST                    # ftpuser: PWD CWD MKD STOR LIST RNFR/RNTO DELE RMD
  ftpclient.py closedport HOST FILE        # PORT naming a port nobody listens on, RETR: must end in 425
  ftpclient.py portreply HOST              # PORT naming our own endpoint; prints the reply
  ftpclient.py paced HOST MODE FILE OUT [PROXY]  # a download while NOOPs go every 100 ms on the same session
                                           # (PROXY: HOST:PORT of ftpgate's explicit proxy, USER anonymous@HOST)
                                           # (a server that answers during a transfer: pyftpdlib);
                                           # prints "SECONDS NOOPS MAX_NOOP_MS"
  ftpclient.py fixedport HOST PORT FILE OUT [reset]  # a PASV download whose data connection comes
                                           # from local port PORT; "reset": bytes are sent on it
                                           # during the RETR, so that the server, closing it with
                                           # them unread, resets it; prints the final reply
MODE is one of pasv, epsv, port, eprt.
"""
import ftplib, os, socket, sys, time, re

def recv_reply(f):
    line = f.readline()
    code = line[:3]
    if line[3:4] == "-":
        while True:
            l = f.readline()
            if l[:3] == code and l[3:4] == " ":
                break
    return line

class Raw:
    def __init__(self, host, byte_delay=0.0, nagle=False, proxy=None):
        self.host = host
        self.user = "anonymous" if proxy is None else "anonymous@" + host
        if proxy is not None:
            ph, pp = proxy.rsplit(":", 1)
            self.host = ph  # the data connections go where the proxy's 227/229 say
            self.s = socket.create_connection((ph, int(pp)), timeout=20)
        else:
            self.s = socket.create_connection((host, 21), timeout=20)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0 if nagle else 1)
        self.f = self.s.makefile("r", encoding="latin-1", newline="\r\n")
        self.delay = byte_delay
        self.expect("220")

    def send(self, text):
        data = text.encode("latin-1")
        if self.delay:
            for i in range(len(data)):
                self.s.send(data[i:i + 1])
                time.sleep(self.delay)
        else:
            self.s.sendall(data)

    def expect(self, prefix):
        r = recv_reply(self.f)
        if not r.startswith(prefix):
            raise SystemExit(f"expected {prefix}, got {r!r}")
        return r

    def login(self, pw):
        if self.cmd("USER " + self.user, "").startswith("331"):
            self.cmd("PASS " + pw, "230")

    def cmd(self, text, prefix):
        self.send(text + "\r\n")
        return self.expect(prefix)

def pasv_endpoint(reply):
    """The (address, port) a 227 reply names."""
    n = [int(x) for x in re.search(r"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)", reply).groups()]
    return ".".join(map(str, n[:4])), n[4] * 256 + n[5]

def wait_go(sig, required=True):
    """Waits (20 s at most) until the test creates SIG.go; without it, fails if required."""
    for _ in range(400):
        if os.path.exists(sig + ".go"):
            return
        time.sleep(0.05)
    if required:
        raise SystemExit("no go signal")

def save_stream(s, out):
    with open(out, "wb") as o:
        while b := s.recv(65536):
            o.write(b)

def data_conn(c, mode):
    if mode == "pasv":
        return socket.create_connection(pasv_endpoint(c.cmd("PASV", "227")), timeout=20), None
    if mode == "epsv":
        r = c.cmd("EPSV", "229")
        port = int(re.search(r"\(\|\|\|(\d+)\|\)", r).group(1))
        return socket.create_connection((c.host, port), timeout=20), None
    l = socket.socket(c.s.family)
    l.bind((c.s.getsockname()[0], 0)); l.listen(1); l.settimeout(20)
    ip, port = l.getsockname()[:2]
    if mode == "port":
        c.cmd("PORT %s,%d,%d" % (ip.replace(".", ","), port >> 8, port & 255), "200")
    else:
        c.cmd("EPRT |%d|%s|%d|" % (2 if c.s.family == socket.AF_INET6 else 1, ip, port), "200")
    return None, l

def retr(c, mode, name, out):
    s, l = data_conn(c, mode)
    c.send("RETR %s\r\n" % name)
    c.expect("1")
    if l:
        s, _ = l.accept()
    save_stream(s, out)
    s.close()
    c.expect("226")

def main():
    what = sys.argv[1]
    if what == "typist":
        host, mode, name, out = sys.argv[2:6]
        extra = sys.argv[6:]
        delay = float(extra[1]) if len(extra) > 1 else 0.002
        c = Raw(host, byte_delay=delay, nagle=bool(extra) and extra[0] == "nagle")
        c.login("typist@"); c.cmd("TYPE I", "200")
        retr(c, mode, name, out)
        c.cmd("QUIT", "221")
    elif what == "closedport":
        host, name = sys.argv[2:4]
        c = Raw(host)
        c.login("closed@"); c.cmd("TYPE I", "200")
        l = socket.socket(); l.bind((c.s.getsockname()[0], 0))
        ip, port = l.getsockname(); l.close()  # bound, never listening: connections are refused
        c.cmd("PORT %s,%d,%d" % (ip.replace(".", ","), port >> 8, port & 255), "200")
        c.send("RETR %s\r\n" % name)
        r = recv_reply(c.f)
        if r.startswith("1"):
            r = recv_reply(c.f)
        print(r.strip())
        if not r.startswith("425"):
            raise SystemExit(f"expected 425, got {r!r}")
        c.cmd("NOOP", "200"); c.cmd("QUIT", "221")
    elif what == "pipeline":
        host, name, out = sys.argv[2:5]
        c = Raw(host)
        c.login("pipe@")
        c.send("TYPE I\r\nPASV\r\n"); c.expect("200")
        s = socket.create_connection(pasv_endpoint(c.expect("227")), timeout=20)
        c.send("RETR %s\r\n" % name); c.expect("1")
        save_stream(s, out)
        c.expect("226"); c.cmd("QUIT", "221")
    elif what == "ftplib":
        host, mode, name, out = sys.argv[2:6]
        f = ftplib.FTP(host, timeout=20)
        f.login(*sys.argv[6:8])
        f.set_pasv(mode == "pasv")
        with open(out, "wb") as o:
            f.retrbinary("RETR " + name, o.write)
        f.quit()
    elif what == "abort":
        host, name = sys.argv[2:4]
        f = ftplib.FTP(host, timeout=20)
        f.login()
        f.voidcmd("TYPE I")
        conn = f.transfercmd("RETR " + name)
        got = 0
        while got < 262144:
            got += len(conn.recv(65536))
        conn.close()
        try:
            f.abort()
        except ftplib.all_errors:
            pass
        f.close()
    elif what == "restart":
        host, name, ref, sig = sys.argv[2:6]
        want = open(ref, "rb").read()
        f = ftplib.FTP(host, timeout=20)
        f.login()
        f.voidcmd("TYPE I")
        def active(port):
            l = socket.socket(f.sock.family)
            l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            l.bind((f.sock.getsockname()[0], port)); l.listen(1); l.settimeout(20)
            if f.sock.family == socket.AF_INET6:
                f.sendeprt(f.sock.getsockname()[0], port)  # EPRT |2|: translated on NAT64
            else:
                f.sendport(f.sock.getsockname()[0], port)
            r = f.sendcmd("RETR " + name)
            assert r.startswith("1"), r
            conn, _ = l.accept()
            got = b""
            while b := conn.recv(65536):
                got += b
            conn.close(); l.close()
            f.voidresp()
            assert got == want, "active download differs"
        active(1030)
        open(sig + ".ready", "w").close()
        wait_go(sig)
        active(1031)
        f.set_pasv(True)
        got = []
        f.retrbinary("RETR " + name, got.append)
        assert b"".join(got) == want, "passive download differs"
        f.quit()
    elif what == "bounceattack":
        # the attack itself: PORT/EPRT naming TARGET, each followed by LIST; prints the replies
        host, target = sys.argv[2], sys.argv[3]
        c = Raw(host)
        c.login("attack@")
        t = target.replace(".", ",")
        lines = (f"PORT {t},31,144", f"EPRT |1|{target}|8080|", f"PORT {t},0,25")
        if ":" in target:
            lines = (f"EPRT |2|{target}|8080|", f"EPRT |2|{target}|25|")
        for line in lines:
            c.send(line + "\r\n"); r1 = c.expect("")
            c.send("LIST\r\n"); r2 = c.expect("")
            if r2.startswith("1"):
                c.s.settimeout(5)
                try:
                    r2 += " / " + c.expect("")
                except OSError:
                    r2 += " / (no final reply)"
                    print(f"{line!r}: {r1.strip()} | LIST: {r2.strip()}")
                    break
            print(f"{line!r}: {r1.strip()} | LIST: {r2.strip()}")
    elif what == "pasvwait":
        host, name, out, sig = sys.argv[2:6]
        c = Raw(host)
        c.login("wait@"); c.cmd("TYPE I", "200")
        if c.s.family == socket.AF_INET6:
            r = c.cmd("EPSV", "229")
            ep = (host, int(re.search(r"\(\|\|\|(\d+)\|\)", r).group(1)))
        else:
            ep = pasv_endpoint(c.cmd("PASV", "227"))
        open(sig + ".ep", "w").write(f"{ep[0]} {ep[1]}\n")
        wait_go(sig, required=False)
        s = socket.create_connection(ep, timeout=20)
        c.send("RETR %s\r\n" % name); c.expect("1")
        save_stream(s, out)
        c.expect("226"); c.cmd("QUIT", "221")
    elif what == "portwait":
        # active mode: PORT, then write our own endpoint to SIG.ep, wait for SIG.go, RETR
        host, name, out, sig = sys.argv[2:6]
        c = Raw(host)
        c.login("wait@"); c.cmd("TYPE I", "200")
        l = socket.socket(); l.bind((c.s.getsockname()[0], 0)); l.listen(1); l.settimeout(20)
        ip, port = l.getsockname()
        c.cmd("PORT %s,%d,%d" % (ip.replace(".", ","), port >> 8, port & 255), "200")
        open(sig + ".ep", "w").write(f"{ip} {port}\n")
        wait_go(sig, required=False)
        c.send("RETR %s\r\n" % name); c.expect("1")
        s, _ = l.accept()
        save_stream(s, out)
        c.expect("226"); c.cmd("QUIT", "221")
    elif what == "portreply":
        # PORT naming our own endpoint; prints the reply (e.g. 425 when no port is left)
        host = sys.argv[2]
        c = Raw(host)
        c.login("reply@")
        l = socket.socket(); l.bind((c.s.getsockname()[0], 0)); l.listen(1)
        ip, port = l.getsockname()
        c.send("PORT %s,%d,%d\r\n" % (ip.replace(".", ","), port >> 8, port & 255))
        print(c.expect("").strip())
        c.cmd("QUIT", "221")
    elif what == "grab":
        # a thief: connect to HOST PORT, print how many bytes it got (0 also when refused)
        host, port = sys.argv[2], int(sys.argv[3])
        got = 0
        try:
            s = socket.create_connection((host, port), timeout=5)
            s.settimeout(5)
            while b := s.recv(65536):
                got += len(b)
        except OSError as e:
            print("error:", e)
        print(got)
    elif what == "limits":
        host, n, m = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        sessions = [Raw(host) for _ in range(n)]
        for c in sessions:
            c.login("limits@")
        s = socket.create_connection((host, 21), timeout=20)
        g = s.makefile("r", encoding="latin-1").readline()
        if not g.startswith("421 "):
            raise SystemExit(f"session {n + 1}: greeting {g!r}, expected 421")
        print("over the session limit:", g.strip())
        s.close()
        pending = []
        for c in sessions[:m]:
            pending.append(pasv_endpoint(c.cmd("PASV", "227")))
        c = sessions[m]
        c.send("PASV\r\n")
        r = c.expect("")
        if not r.startswith("425"):
            raise SystemExit(f"PASV over the data limit answered {r!r}, expected 425")
        print("over the data limit:", r.strip())
        for ep in pending:  # use the announced ports up, so the relay frees them
            socket.create_connection(ep, timeout=20).close()
        for c in sessions:
            c.cmd("QUIT", "221")
    elif what == "load":
        import threading
        host, name, ref, n, stalled = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
        want = open(ref, "rb").read()
        hold = []
        for i in range(stalled):  # a download whose reader never reads
            f = ftplib.FTP(host, timeout=60); f.login(); f.voidcmd("TYPE I")
            conn = f.transfercmd("RETR big.bin")
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            hold.append((f, conn))
        failures = []
        # connects are paced (vsftpd's standalone listener loses connections in a burst of
        # 200 at once, with or without ftpgate); all downloads start together once every
        # session is logged in
        barrier = threading.Barrier(n, timeout=120)
        def worker(i):
            f = ftplib.FTP(timeout=60)
            try:
                time.sleep(i * 0.01)
                f.connect(host)
                f.login()
                f.set_pasv(i % 2 == 0)
                barrier.wait()
                got = []
                f.retrbinary("RETR " + name, got.append)
                if b"".join(got) != want:
                    failures.append(f"{i}: content differs")
                f.quit()
            except Exception as e:
                port = f.sock.getsockname()[1] if f and f.sock else "-"
                failures.append(f"{i} (control port {port}): {e!r}")
                barrier.abort()
        t0 = time.time()
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
        for t in threads: t.start()
        for t in threads: t.join()
        took = time.time() - t0
        for f, conn in hold:
            conn.close(); f.close()
        print(f"{n} sessions, {len(failures)} failures, {took:.1f} s, {stalled} stalled clients")
        for x in failures[:40]: print(" ", x)
        sys.exit(1 if failures else 0)
    elif what == "many":
        # one session, many transfers alternating active/passive: length-changing rewrites pile up
        host, name, ref, n = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
        want = open(ref, "rb").read()
        f = ftplib.FTP(host, timeout=20)
        f.login()
        for i in range(n):
            f.set_pasv(i % 2 == 1)
            got = []
            f.retrbinary("RETR " + name, got.append)
            assert b"".join(got) == want, f"transfer {i} differs"
            f.voidcmd("NOOP" + " " * (i % 7))
        f.quit()
    elif what == "bounce":
        # PORT/EPRT naming a third party must be refused with a 5xx; the session goes on
        host, name, out = sys.argv[2:5]
        target = sys.argv[5] if len(sys.argv) > 5 else "10.0.2.99"
        c = Raw(host)
        c.login("bounce@")
        t = target.replace(".", ",")
        own = c.s.getsockname()[0].replace(".", ",")
        lines = (f"PORT {t},31,144", f"EPRT |1|{target}|8080|", f"PORT {t},0,25", f"PORT {own},0,25")
        if c.s.family == socket.AF_INET6:
            # a third party, the client's own address at a privileged port, the other family
            own = c.s.getsockname()[0]
            lines = (f"EPRT |2|{target}|8080|", f"EPRT |2|{own}|25|", "EPRT |1|10.0.2.99|8080|", "PORT 10,0,2,99,31,144")
        for line in lines:
            c.send(line + "\r\n")
            r = c.expect("")
            if not r.startswith("5"):
                raise SystemExit(f"{line!r} answered {r!r}, expected 5xx")
        c.cmd("TYPE I", "200")
        retr(c, "epsv" if c.s.family == socket.AF_INET6 else "pasv", name, out)
        c.cmd("QUIT", "221")
    elif what == "algs":
        # RFC 6384 section 11: ALGS STATUS64 / DISABLE64 / ENABLE64 answered 216, then an EPSV
        # download on the same session
        host, name, out = sys.argv[2:5]
        c = Raw(host)
        c.login("algs@"); c.cmd("TYPE I", "200")
        got = []
        for arg in ("STATUS64", "DISABLE64", "STATUS64", "ENABLE64", "STATUS64"):
            got.append(c.cmd("ALGS " + arg, "216").strip())
        print(" | ".join(got))
        if "enabled" not in got[0] or "disabled" not in got[2] or "enabled" not in got[4]:
            raise SystemExit("ALGS answers: " + " | ".join(got))
        retr(c, "epsv", name, out)
        c.cmd("QUIT", "221")
    elif what == "denied":
        # CMD on a logged-in session must be answered 550 by the gateway; then a download on the
        # same session works
        host, cmd, name, out = sys.argv[2:6]
        f = ftplib.FTP(host, timeout=20)
        f.login("ftpuser", "ftppass")
        try:
            if cmd == "STOR":
                with open(__file__, "rb") as src:
                    f.storbinary("STOR denied-upload.bin", src)
            else:
                f.sendcmd(cmd)
            raise SystemExit(f"{cmd} was not refused")
        except ftplib.error_perm as e:
            print(str(e))
            if not str(e).startswith("550"):
                raise SystemExit(f"{cmd}: {e}")
        with open(out, "wb") as o:
            f.retrbinary("RETR " + name, o.write)
        f.quit()
    elif what == "paced":
        import threading
        host, mode, name, out = sys.argv[2:6]
        proxy = sys.argv[6] if len(sys.argv) > 6 else None  # HOST:PORT of an explicit proxy
        c = Raw(host, proxy=proxy)
        c.login("paced@"); c.cmd("TYPE I", "200")
        s, l = data_conn(c, mode)
        t0 = time.monotonic()
        c.send("RETR %s\r\n" % name)
        c.expect("1")
        if l:
            s, _ = l.accept()
        done = threading.Event()
        def save():
            save_stream(s, out)
            s.close()
            done.set()
        th = threading.Thread(target=save); th.start()
        rtts, finished = [], False
        while not done.wait(0.1):
            t = time.monotonic()
            c.send("NOOP\r\n")
            while True:  # the transfer's 226 may come before the NOOP's 200
                r = recv_reply(c.f)
                if r.startswith("226"):
                    finished = True
                    continue
                if not r.startswith("200"):
                    raise SystemExit(f"NOOP: {r!r}")
                break
            rtts.append(time.monotonic() - t)
        th.join()
        took = time.monotonic() - t0
        if not finished:
            c.expect("226")
        c.cmd("QUIT", "221")
        print("%.3f %d %.1f (ms: %s)" % (took, len(rtts), max(rtts, default=0) * 1000, " ".join("%.1f" % (r * 1000) for r in rtts)))
    elif what == "fixedport":
        host, port, name, out = sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
        reset = sys.argv[6:7] == ["reset"]
        sys.excepthook = lambda t, e, tb: print(f"error: {t.__name__}: {e}")
        f = ftplib.FTP(host, timeout=8); f.login(); f.voidcmd("TYPE I")
        ep = re.search(r"\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)", f.sendcmd("PASV")).groups()
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("", port)); s.settimeout(8)
        s.connect((host, int(ep[4]) * 256 + int(ep[5])))
        f.sendcmd("RETR " + name)
        if reset:
            s.sendall(b"x" * 1000)
        with open(out, "wb") as o:
            try:
                while True:
                    b = s.recv(65536)
                    if not b:
                        break
                    o.write(b)
            except ConnectionResetError:
                pass
        s.close()
        print(f.getresp())
    elif what == "login":
        # USER/PASS: prints the reply to the login (or its error)
        host, user, pw = sys.argv[2:5]
        try:
            f = ftplib.FTP(host, timeout=20)  # a refused session's 421 greeting raises here
            print(f.login(user, pw))
        except ftplib.all_errors as e:
            print(e)
    elif what == "v6classic":
        # PASV and PORT on an IPv6 session: each gets a reply (the server's to PASV, ftpgate's
        # or the server's to PORT), neither opens a data connection to an IPv4 address; then an
        # EPSV download on the same session
        host, name, out = sys.argv[2:5]
        c = Raw(host)
        c.login("classic@"); c.cmd("TYPE I", "200")
        c.send("PASV\r\n"); r1 = c.expect("")
        c.send("PORT 10,0,2,99,31,144\r\n"); r2 = c.expect("")
        print("PASV:", r1.strip()); print("PORT:", r2.strip())
        if not r2.startswith(("4", "5")):
            raise SystemExit(f"PORT naming an IPv4 host on an IPv6 session answered {r2!r}")
        retr(c, "epsv", name, out)
        c.cmd("QUIT", "221")
    elif what == "garbage":
        # malformed and oversized lines must not break the helper; the session still works
        host, name, out = sys.argv[2:5]
        c = Raw(host)
        c.send("PASV\r\n")  # before login
        r = c.expect("")
        if not r[:1] in ("4", "5"):
            raise SystemExit(f"PASV before login answered {r!r}, expected an error")
        c.login("garbage@")
        for line in ("\x00\xff\xfe junk", "PORT " + ",".join(["1"] * 1000), "PORT 1,2,3",
                     "PORT 10,0,1,2,300,1", "EPRT |7|10.0.1.2|99999|", "EPRT |1|10.0.1.2|99999|",
                     "A" * 3000):
            c.send(line + "\r\n")
            r = c.expect("")
            if not r[:1] in ("4", "5"):
                raise SystemExit(f"{line[:40]!r} answered {r!r}, expected an error")
        c.cmd("TYPE I", "200")
        retr(c, "pasv", name, out)
        c.cmd("QUIT", "221")
        # 9,000 bytes without CRLF, then the connection closes: the next session must work
        s = socket.create_connection((host, 21), timeout=20)
        s.recv(100)
        s.sendall(b"P" * 9000)
        time.sleep(0.2)
        s.close()
        c = Raw(host)
        c.login("after@")
        c.cmd("TYPE I", "200")
        retr(c, "port", name, out)
        c.cmd("QUIT", "221")
    elif what == "ops":
        host, src = sys.argv[2], sys.argv[3]
        f = ftplib.FTP(host, timeout=20)
        f.login("ftpuser", "ftppass")
        home = f.pwd()
        f.mkd("sub"); f.cwd("sub"); assert f.pwd().endswith("/sub"), f.pwd()
        with open(src, "rb") as i:
            f.storbinary("STOR up.bin", i)
        assert "up.bin" in f.nlst(), f.nlst()
        lines = []; f.retrlines("LIST", lines.append); assert any("up.bin" in l for l in lines), lines
        f.rename("up.bin", "moved.bin")
        f.set_pasv(False)
        f.storbinary("STOR active.bin", open(src, "rb"))
        f.delete("active.bin")
        f.set_pasv(True)
        assert f.size("moved.bin") == len(open(src, "rb").read())
        f.cwd(home)
        f.quit()
    else:
        raise SystemExit(__doc__)

if __name__ == "__main__":
    main()
