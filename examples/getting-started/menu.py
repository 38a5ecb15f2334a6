"""The menu: answers GET /menu by asking the kitchen for today's dishes.

It calls the kitchen by its service name, http://kitchen:9000, as if nothing stood
between them; the mesh resolves the name and carries the call (docs/getting-started.md).
"""
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.request import urlopen


class Menu(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass  # quiet: it shares the terminal with the other commands

    def do_GET(self):
        if self.path != "/menu":
            self.send_error(404, "try /menu")
            return
        with urlopen("http://kitchen:9000/dishes", timeout=5) as answer:
            dishes = answer.read().decode().splitlines()
        body = "Today's menu:\n" + "".join(f"  - {d}\n" for d in dishes)
        body = body.encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


HTTPServer(("0.0.0.0", 8080), Menu).serve_forever()
