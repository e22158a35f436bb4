"""An OTLP/gRPC trace and logs receiver for the tests: the real protocol, from PyPI's
opentelemetry-proto and grpcio. Prints `listening PORT`, then one JSON line per span or
log record received (a log record's line has `"log": true`), flushing each, until it is
killed."""

import json
import sys
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


# Exports arrive on several threads; one line at a time.
PRINT = threading.Lock()


def emit(line):
    with PRINT:
        print(json.dumps(line), flush=True)


def value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def attributes(pairs):
    return {kv.key: value(kv.value) for kv in pairs}


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        for resource_spans in request.resource_spans:
            resource = attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    emit(
                        {
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_span_id": span.parent_span_id.hex(),
                            "name": span.name,
                            "start": span.start_time_unix_nano,
                            "end": span.end_time_unix_nano,
                            "attributes": attributes(span.attributes),
                            "links": [
                                {"trace_id": l.trace_id.hex(), "span_id": l.span_id.hex()}
                                for l in span.links
                            ],
                            "resource": resource,
                        }
                    )
        return trace_service_pb2.ExportTraceServiceResponse()


class LogsReceiver(logs_service_pb2_grpc.LogsServiceServicer):
    def Export(self, request, context):
        for resource_logs in request.resource_logs:
            resource = attributes(resource_logs.resource.attributes)
            for scope_logs in resource_logs.scope_logs:
                for record in scope_logs.log_records:
                    emit(
                        {
                            "log": True,
                            "trace_id": record.trace_id.hex(),
                            "span_id": record.span_id.hex(),
                            "time": record.time_unix_nano,
                            "severity_number": record.severity_number,
                            "severity_text": record.severity_text,
                            "event_name": record.event_name,
                            "body": value(record.body),
                            "attributes": attributes(record.attributes),
                            "resource": resource,
                        }
                    )
        return logs_service_pb2.ExportLogsServiceResponse()


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(), server)
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(LogsReceiver(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"listening {port}", flush=True)
    sys.stdout.flush()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
