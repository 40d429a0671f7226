"""A real OTLP metrics receiver for tests/tests/observability.rs, built on the
official OpenTelemetry protos (PyPI opentelemetry-proto) and grpcio.

Serves the OTLP MetricsService over gRPC (--grpc-port) and/or OTLP/HTTP
protobuf POST /v1/metrics (--http-port), and appends every request it
receives to --out as one JSON line (protobuf's JSON mapping), flushed at
once, so the test can read what the agent sent. Prints "ready" when serving.
"""

import argparse
import http.server
import sys
import threading
from concurrent import futures

import grpc
from google.protobuf.json_format import MessageToJson
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)

LOCK = threading.Lock()


def record(out, req, transport):
    line = MessageToJson(req, indent=None, preserving_proto_field_name=False)
    with LOCK:
        out.write('{"transport": "%s", "request": %s}\n' % (transport, line))
        out.flush()


class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, out):
        self.out = out

    def Export(self, request, context):
        record(self.out, request, "grpc")
        return metrics_service_pb2.ExportMetricsServiceResponse()


def http_handler(out):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            if self.path != "/v1/metrics":
                self.send_error(404)
                return
            if self.headers.get("Content-Type") != "application/x-protobuf":
                self.send_error(415)
                return
            n = int(self.headers.get("Content-Length", "0"))
            req = metrics_service_pb2.ExportMetricsServiceRequest()
            req.ParseFromString(self.rfile.read(n))
            record(out, req, "http")
            body = metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return Handler


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--grpc-port", type=int)
    ap.add_argument("--http-port", type=int)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    out = open(a.out, "a", encoding="utf-8")
    if a.grpc_port:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(out), server)
        server.add_insecure_port("127.0.0.1:%d" % a.grpc_port)
        server.start()
    if a.http_port:
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", a.http_port), http_handler(out))
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
    print("ready", flush=True)
    # Serve until stdin closes or the process is killed.
    sys.stdin.read()


if __name__ == "__main__":
    main()
