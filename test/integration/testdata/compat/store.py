# A Python process holding state built in memory: a dict of 100,000
# digests, and one entry more per tick. It writes its tick counter to a
# file (atomically) and answers "GET key" on a unix socket with the value.
import hashlib
import os
import socket
import sys

counter, sock_path = sys.argv[1], sys.argv[2]
data = {"k%d" % i: hashlib.sha256(str(i).encode()).hexdigest() for i in range(100_000)}
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(sock_path)
srv.listen(8)
srv.settimeout(0.05)
tick = 0
while True:
    data["tick%d" % tick] = str(tick)
    with open(counter + ".tmp", "w") as f:
        f.write("%d\n" % tick)
    os.replace(counter + ".tmp", counter)
    tick += 1
    try:
        conn, _ = srv.accept()
    except socket.timeout:
        continue
    with conn:
        key = conn.recv(256).decode().strip().removeprefix("GET ")
        conn.sendall((data.get(key, "-") + "\n").encode())
