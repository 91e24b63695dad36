"""FTP clients that use ftpgate as an explicit proxy (run inside the client namespace).
  proxyclient.py userhost PROXY:PORT HOST USER PASS MODE FILE OUT [UPLOAD]
      USER user@host, PASS; download FILE (MODE pasv|port|epsv|eprt); with UPLOAD, STOR it as
      up-proxy.bin too
  proxyclient.py site|open PROXY:PORT HOST PUSER PPASS USER PASS MODE FILE OUT
      proxy login, SITE/OPEN host, server login, download
  proxyclient.py proxyat PROXY:PORT HOST PUSER PPASS USER PASS MODE FILE OUT
      USER proxyuser@host, PASS proxypass, then the server login, download
  proxyclient.py refused PROXY:PORT LINE...     # prints the reply to the last line; ok if 4xx/5xx
  proxyclient.py badpass PROXY:PORT PUSER        # 3 wrong passwords: prints each reply's seconds
  proxyclient.py greeting PROXY:PORT             # prints the first reply
  proxyclient.py many PROXY:PORT HOST N FILE SRC  # N sessions at once (USER anonymous@HOST), each
      downloading FILE (half passive, half active); compares with SRC; prints "ok failed"
"""
import ftplib, socket, sys, time

from ftpclient import save_stream


def connect(proxy):
    host, port = proxy.rsplit(":", 1)
    host = host.strip("[]")  # [IPv6]:port
    f = ftplib.FTP(timeout=20)
    f.connect(host, int(port))
    return f


def download(f, mode, name, out):
    f.pwd()  # as FileZilla and lftp do after login: the cache then knows the absolute path
    if mode in ("port", "eprt"):
        f.set_pasv(False)
        if mode == "port":
            f.af = socket.AF_INET  # PORT (ftplib sends EPRT only for IPv6)
    else:
        f.set_pasv(True)
    if mode == "epsv":
        # ftplib sends EPSV only for IPv6: ask for it by hand
        resp = f.sendcmd("EPSV")
        port = int(resp.split("(|||")[1].split("|")[0])
        conn = socket.create_connection((f.sock.getpeername()[0], port), timeout=20)
        f.sendcmd("TYPE I")
        f.putcmd("RETR " + name)
        resp = f.getresp()
        if not resp.startswith("1"):
            raise SystemExit("RETR: " + resp)
        save_stream(conn, out)
        conn.close()
        f.voidresp()
        return
    with open(out, "wb") as o:
        f.retrbinary("RETR " + name, o.write)


def main():
    what, proxy = sys.argv[1], sys.argv[2]
    a = sys.argv[3:]
    if what == "userhost":
        host, user, pw, mode, name, out = a[:6]
        f = connect(proxy)
        f.login(f"{user}@{host}", pw)
        download(f, mode, name, out)
        if len(a) > 6:
            with open(a[6], "rb") as src:
                f.storbinary("STOR up-proxy.bin", src)
        f.quit()
    elif what in ("site", "open", "proxyat"):
        host, puser, ppw, user, pw, mode, name, out = a[:8]
        f = connect(proxy)
        if what == "proxyat":
            r = f.sendcmd(f"USER {puser}@{host}")
            assert r.startswith("331"), r
            r = f.sendcmd(f"PASS {ppw}")
            assert r.startswith("230"), r
        else:
            f.login(puser, ppw)
            r = f.sendcmd(f"{what.upper()} {host}")
            assert r.startswith("2"), r
        f.login(user, pw)
        download(f, mode, name, out)
        f.quit()
    elif what == "refused":
        f = connect(proxy)
        r = ""
        for line in a:
            try:
                r = f.sendcmd(line)
            except ftplib.Error as e:
                r = str(e)
        print(r)
        if r[:1] not in ("4", "5"):
            raise SystemExit(f"not refused: {r}")
    elif what == "badpass":
        f = connect(proxy)
        times = []
        for i in range(3):
            f.sendcmd(f"USER {a[0]}")
            t = time.time()
            try:
                r = f.sendcmd("PASS wrong-password")
                raise SystemExit(f"wrong password accepted: {r}")
            except ftplib.error_perm as e:
                assert str(e).startswith("530"), e
            times.append(time.time() - t)
        # after the third failure the proxy says 421 and closes
        try:
            last = f.getline()
        except Exception as e:
            last = f"({e})"
        print(" ".join(f"{t:.2f}" for t in times), "|", last)
    elif what == "many":
        import io, threading
        host, n, name, src = a[0], int(a[1]), a[2], open(a[3], "rb").read()
        done, failed, errors = [0], [0], []
        lock = threading.Lock()
        barrier = threading.Barrier(n)
        def one(i):
            try:
                f = connect(proxy)
                f.login(f"anonymous@{host}", "x")
                barrier.wait(timeout=60)  # every session logged in at once, then all transfer
                f.set_pasv(i % 2 == 0)
                buf = io.BytesIO()
                f.retrbinary("RETR " + name, buf.write)
                f.quit()
                ok = buf.getvalue() == src
            except Exception as e:
                ok = False
                with lock:
                    errors.append(repr(e))
            with lock:
                (done if ok else failed)[0] += 1
        ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in ts: t.start()
        for t in ts: t.join()
        print(done[0], failed[0], *errors[:3])
        if failed[0]:
            raise SystemExit(1)
    elif what == "greeting":
        host, port = proxy.rsplit(":", 1)
        host = host.strip("[]")
        s = socket.create_connection((host, int(port)), timeout=10)
        print(s.makefile("rb").readline().decode().strip())
    else:
        raise SystemExit(__doc__)


main()
