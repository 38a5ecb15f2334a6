"""An application instrumented with the OpenTelemetry SDK, as a team would write one, for
Skein's tests: it serves HTTP, continues the trace its proxy passes (W3C traceparent),
calls another service through its proxy with the context injected, and exports its own
spans over OTLP/gRPC.

Usage: traced_app.py LISTEN_HOST:PORT PROXY_HOST:PORT DOWNSTREAM_URL OTLP_ENDPOINT
"""

import sys
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

listen, proxy, downstream, otlp = sys.argv[1:5]
provider = TracerProvider(resource=Resource.create({"service.name": "frontend"}))
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=otlp, insecure=True)))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("traced_app")
opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": f"http://{proxy}"}))


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        parent = propagate.extract(dict(self.headers.items()))
        with tracer.start_as_current_span(f"handle {self.path}", context=parent, kind=trace.SpanKind.SERVER):
            with tracer.start_as_current_span("call restaurant", kind=trace.SpanKind.CLIENT):
                headers = {}
                propagate.inject(headers)
                request = urllib.request.Request(downstream + self.path, headers=headers)
                try:
                    with opener.open(request, timeout=10) as resp:
                        status, body = resp.status, resp.read()
                except urllib.error.HTTPError as e:
                    status, body = e.code, e.read()
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


host, port = listen.rsplit(":", 1)
ThreadingHTTPServer((host, int(port)), Handler).serve_forever()
