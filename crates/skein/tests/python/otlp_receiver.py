"""A third-party OTLP/gRPC trace receiver for Skein's tests, built from the published
OpenTelemetry protobuf definitions (the `opentelemetry-proto` package) and grpcio.

Usage: otlp_receiver.py HOST:PORT OUT.jsonl
Prints "listening PORT" once serving, then appends one JSON object per received span to
OUT.jsonl: ids in hex, the kind's enum name, attributes and resource attributes by key.
"""

import json
import sys
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2


def value(v):
    kind = v.WhichOneof("value")
    if kind in ("string_value", "int_value", "bool_value", "double_value"):
        return getattr(v, kind)
    return str(v)


def attributes(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, out):
        self.out = out

    def Export(self, request, context):
        with open(self.out, "a", encoding="utf-8") as f:
            for rs in request.resource_spans:
                resource = attributes(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        f.write(json.dumps({
                            "traceId": s.trace_id.hex(),
                            "spanId": s.span_id.hex(),
                            "parentSpanId": s.parent_span_id.hex(),
                            "name": s.name,
                            "kind": trace_pb2.Span.SpanKind.Name(s.kind),
                            "startTimeUnixNano": s.start_time_unix_nano,
                            "endTimeUnixNano": s.end_time_unix_nano,
                            "status": s.status.code,
                            "attributes": attributes(s.attributes),
                            "resource": resource,
                            "scope": ss.scope.name,
                        }) + "\n")
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    address, out = sys.argv[1], sys.argv[2]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(out), server)
    port = server.add_insecure_port(address)
    server.start()
    print(f"listening {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
