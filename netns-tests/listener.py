"""A third party for the netns tests: listens on the given ports and appends one line per
accepted connection ("PORT from ADDR") to LOG, so a test can prove nobody connected.
  listener.py LOG IP PORT...
"""
import socket, sys, threading

log, ip, ports = sys.argv[1], sys.argv[2], [int(p) for p in sys.argv[3:]]

def serve(port):
    s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, port)); s.listen(16)
    while True:
        c, a = s.accept()
        with open(log, "a") as f:
            f.write(f"{port} from {a[0]}:{a[1]}\n")
        c.close()

for p in ports:
    threading.Thread(target=serve, args=(p,), daemon=True).start()
threading.Event().wait()
