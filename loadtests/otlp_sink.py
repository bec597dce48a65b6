"""A minimal OTLP/HTTP trace receiver: `python -m loadtests.otlp_sink --port 4318` takes what an exporter posts to
`/v1/traces` (protobuf `ExportTraceServiceRequest`, gzip or not), decodes it and keeps the spans; it prints a count
every `--report` seconds. The tracing tests read spans from it in process (`OtlpSink`), and the tracing benchmark
points the service at it, so that tracing on costs the service what it costs with a real collector's receiver.
"""

from __future__ import annotations

import argparse
import gzip
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span


class OtlpSink:
    """An OTLP/HTTP receiver on 127.0.0.1:`port` (0: any free port) in a thread of its own."""

    def __init__(self, port: int = 0) -> None:
        self._spans: list[tuple[dict[str, Any], Span]] = []
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest.FromString(body)
                sink.keep(request)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-sink", daemon=True)

    @property
    def endpoint(self) -> str:
        """What OTEL_EXPORTER_OTLP_ENDPOINT should say."""
        return f"http://127.0.0.1:{self.port}"

    def keep(self, request: ExportTraceServiceRequest) -> None:
        with self._lock:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    self._spans += [(resource, span) for span in scope_spans.spans]

    def spans(self) -> list[tuple[dict[str, Any], Span]]:
        """Every span received so far, with its resource's attributes."""
        with self._lock:
            return list(self._spans)

    def __enter__(self) -> OtlpSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.otlp_sink", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=4318)
    parser.add_argument("--report", type=float, default=10.0, help="print the span count every N seconds")
    args = parser.parse_args(argv)
    with OtlpSink(args.port) as sink:
        print(f"OTLP/HTTP receiver on {sink.endpoint}/v1/traces", flush=True)
        try:
            while True:
                time.sleep(args.report)
                print(f"{len(sink.spans())} spans", flush=True)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    raise SystemExit(main())
