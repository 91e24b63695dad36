"""pyftpdlib server for the netns tests: anonymous (read-only) and ftpuser/ftppass (read-write)."""
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
FTPServer((ip, 21), FTPHandler).serve_forever()
