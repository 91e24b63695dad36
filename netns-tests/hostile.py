"""A hostile FTP server for the netns tests: its 227/229 replies name a third party
(THIRD_IP:DATA_PORT) while it serves the data itself on its own address and the same port.
A client that follows the 227 connects to the third party; through ftpgate nobody may.
  hostile.py IP THIRD_IP DATA_PORT FILE
"""
import socket, sys, threading

ip, third, dport, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
data = open(path, "rb").read()
dl = socket.socket(); dl.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
dl.bind((ip, dport)); dl.listen(16)

def session(c):
    f = c.makefile("rb")
    say = lambda t: c.sendall(t.encode() + b"\r\n")
    say("220 hostile ready")
    for line in f:
        cmd = line.decode("latin-1").strip().split(" ")[0].upper()
        if cmd == "USER": say("331 any password")
        elif cmd == "PASS": say("230 in")
        elif cmd in ("TYPE", "CWD", "NOOP"): say("200 ok")
        elif cmd == "PWD": say('257 "/" is cwd')
        elif cmd == "PASV":
            a = third.replace(".", ",")
            say(f"227 Entering Passive Mode ({a},{dport >> 8},{dport & 255}).")
        elif cmd == "EPSV": say(f"229 Entering Extended Passive Mode (|||{dport}|)")
        elif cmd == "SIZE": say(f"213 {len(data)}")
        elif cmd == "RETR":
            say("150 here it comes")
            d, _ = dl.accept()
            d.sendall(data); d.close()
            say("226 done")
        elif cmd == "QUIT":
            say("221 bye"); break
        else: say("502 not here")
    c.close()

s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((ip, 21)); s.listen(16)
while True:
    c, _ = s.accept()
    threading.Thread(target=session, args=(c,), daemon=True).start()
