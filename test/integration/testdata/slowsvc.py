# A slow-starting HTTP service for the template tests: it builds an
# in-memory table for SECONDS (at least), optionally holds MIB MiB of
# random ballast, then listens on 0.0.0.0:PORT and answers every GET with
# the table's SHA-256 digest.
import hashlib, http.server, os, socketserver, sys, time

port, secs = int(sys.argv[1]), float(sys.argv[2])
mib = int(sys.argv[3]) if len(sys.argv) > 3 else 0
table, t0, i = {}, time.time(), 0
while time.time() - t0 < secs or i < 1000:
    k = "k%d" % (i % 300000)
    table[k] = hashlib.sha256(("%s:%d" % (k, i // 300000)).encode()).hexdigest()
    i += 1
h = hashlib.sha256()
for k in sorted(table):
    h.update(table[k].encode())
digest = h.hexdigest()
ballast = [os.urandom(1 << 20) for _ in range(mib)]


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (digest + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    allow_reuse_address = True
    daemon_threads = True


print("listening on", port, flush=True)
Server(("0.0.0.0", port), Handler).serve_forever()
