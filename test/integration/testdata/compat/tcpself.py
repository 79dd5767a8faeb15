# Counts, and once the file TRIGGER exists, connects to its own listening
# socket over TCP (both ends of the connection in this process), creates
# TRIGGER.connected, and from then on counts only when a byte sent on the
# connection comes back through it.
import os
import socket
import sys
import time

counter, trigger = sys.argv[1], sys.argv[2]
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(1)
a = b = None
i = 0
while True:
    if a is None and os.path.exists(trigger):
        a = socket.create_connection(srv.getsockname())
        b, _ = srv.accept()
        open(trigger + ".connected", "w").close()
    if a is not None:
        a.sendall(b"x")
        if b.recv(1) != b"x":
            sys.exit("the connection lost a byte")
    with open(counter + ".tmp", "w") as f:
        f.write("%d\n" % i)
    os.replace(counter + ".tmp", counter)
    i += 1
    time.sleep(0.05)
