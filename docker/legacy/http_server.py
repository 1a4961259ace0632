"""Legacy HTTP server of the compose topology: serves /srv/www and says which replica it is.

python3 -m http.server would do, but the test must know which replica answered each request
through the translators: every response carries `X-Replica: <name>`, and GET /whoami
returns the name alone. Threaded, HTTP/1.0 (one request per connection, as most of the
test's requests are meant to be separate connections).
"""

import http.server
import os
import sys

REPLICA = os.environ.get("REPLICA", os.uname().nodename)


class Handler(http.server.SimpleHTTPRequestHandler):
    def end_headers(self):
        self.send_header("X-Replica", REPLICA)
        super().end_headers()

    def do_GET(self):
        if self.path == "/whoami":
            body = (REPLICA + "\n").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, fmt, *args):
        # One line per request on stderr (docker logs), without the reverse DNS lookup.
        sys.stderr.write("%s %s %s\n" % (REPLICA, self.client_address[0], fmt % args))


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    root = sys.argv[2] if len(sys.argv) > 2 else "/srv/www"
    os.chdir(root)
    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler)
    print(f"{REPLICA} serving {root} on :{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
