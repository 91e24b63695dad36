"""pyftpdlib server for the netns tests: anonymous (read-only) and ftpuser/ftppass (read-write).
Options: foreign, noext, masq, coalesce, far (below)."""
import sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer

ip, pub, home = sys.argv[1], sys.argv[2], sys.argv[3]
opts = sys.argv[4:]
foreign = "foreign" in opts
auth = DummyAuthorizer()
auth.add_anonymous(pub)
auth.add_user("ftpuser", "ftppass", home, perm="elradfmwMT")
FTPHandler.authorizer = auth
FTPHandler.passive_ports = range(31000, 31999)
FTPHandler.permit_foreign_addresses = foreign
if "noext" in opts:
    # an older server: neither EPSV nor EPRT (RFC 2428)
    FTPHandler.proto_cmds = {k: v for k, v in FTPHandler.proto_cmds.items() if k not in ("EPSV", "EPRT")}
if "masq" in opts:
    FTPHandler.masquerade_address = "192.0.2.9"  # a 227 naming a third party
handler = FTPHandler
if "coalesce" in opts:
    # a transfer after a nonzero REST answers its 125/150 in the same send as what follows (the
    # 226 of an empty transfer, such as a cache hit's): one segment holding both
    class Coalescing(FTPHandler):
        _rest = False
        _held = None

        def ftp_REST(self, line):
            super().ftp_REST(line)
            self._rest = self._restart_position > 0

        def respond(self, resp, logfun=None):
            if resp[:3] in ("125", "150") and self._rest:
                self._rest, self._held = False, resp
                return
            if self._held:
                resp, self._held = self._held + "\r\n" + resp, None
            super().respond(resp)
    handler = Coalescing
if "far" in opts:
    # a server far away: every reply leaves 20 ms after it is made (in order), as over a WAN
    # with that much more round-trip time on the control connection
    base = handler

    class Far(base):
        def respond(self, resp, logfun=None):
            self.ioloop.call_later(0.02, lambda: self.connected and base.respond(self, resp))
    handler = Far
FTPServer((ip, 21), handler).serve_forever()
