"""The kitchen: answers GET /dishes with today's dishes, one per line.

A plain HTTP/1.1 server with no knowledge of the mesh (docs/getting-started.md).
"""
from http.server import BaseHTTPRequestHandler, HTTPServer

DISHES = ["tomato soup", "mushroom risotto", "lemon tart"]


class Kitchen(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass  # quiet: it shares the terminal with the other commands

    def do_GET(self):
        if self.path != "/dishes":
            self.send_error(404, "try /dishes")
            return
        body = "".join(f"{d}\n" for d in DISHES).encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


HTTPServer(("0.0.0.0", 9000), Kitchen).serve_forever()
