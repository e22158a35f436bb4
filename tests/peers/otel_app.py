"""A real application instrumented with the OpenTelemetry Python SDK (PyPI's
opentelemetry-sdk and its OTLP exporters), for the otel collector's tests.

    otel_app.py requests --endpoint URL --protocol grpc|http
        Serves three requests (one fails), logs a warning and an error, flushes, and
        prints one JSON line per request span: its trace and span ids and its status.

    otel_app.py worker --endpoint URL --protocol grpc|http --ready FILE -- CMD...
        Handles one request, `POST /resize`, by running CMD as a worker process; writes
        the worker's pid to FILE once it runs. A worker that is killed (an OOM kill, a
        SIGKILL from a sibling) fails the request: the span ends with an error status.
        Prints the span's ids as one JSON line, then exports it and exits.
"""

import argparse
import json
import os
import subprocess
import sys
import time

from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry import context as otel_context
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode


def exporters(protocol, endpoint):
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return (
            OTLPSpanExporter(endpoint=endpoint, insecure=True),
            OTLPLogExporter(endpoint=endpoint, insecure=True),
        )
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return (
        OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces"),
        OTLPLogExporter(endpoint=endpoint.rstrip("/") + "/v1/logs"),
    )


def setup(protocol, endpoint, service):
    resource = Resource.create({"service.name": service, "process.pid": os.getpid()})
    span_exporter, log_exporter = exporters(protocol, endpoint)
    tracer_provider = TracerProvider(resource=resource)
    # Simple processors: each span is exported as it ends, so nothing waits in a batch
    # when the test looks.
    tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(log_exporter))
    return tracer_provider, logger_provider


def ids(span, status):
    context = span.get_span_context()
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
        "status": status,
    }


def log(logger, severity, text, body):
    # Inside the span: the record carries its trace context.
    logger.emit(
        timestamp=time.time_ns(),
        context=otel_context.get_current(),
        severity_number=severity,
        severity_text=text,
        body=body,
        attributes={"app.order": 42},
    )


def requests(args):
    tracer_provider, logger_provider = setup(args.protocol, args.endpoint, "checkout")
    tracer = tracer_provider.get_tracer("otel_app")
    logger = logger_provider.get_logger("otel_app")
    out = []
    for n, fails in enumerate([False, True, False]):
        with tracer.start_as_current_span(f"GET /cart/{n}", kind=SpanKind.SERVER) as span:
            span.set_attribute("http.request.method", "GET")
            span.set_attribute("http.response.status_code", 503 if fails else 200)
            if fails:
                span.set_status(Status(StatusCode.ERROR, "payment backend refused"))
                log(logger, SeverityNumber.ERROR, "ERROR", "payment failed")
            else:
                log(logger, SeverityNumber.INFO, "INFO", "cart served")
            out.append(ids(span, "error" if fails else "ok"))
    tracer_provider.shutdown()
    logger_provider.shutdown()
    for line in out:
        print(json.dumps(line), flush=True)


def worker(args):
    tracer_provider, logger_provider = setup(args.protocol, args.endpoint, "resizer")
    tracer = tracer_provider.get_tracer("otel_app")
    with tracer.start_as_current_span("POST /resize", kind=SpanKind.SERVER) as span:
        child = subprocess.Popen(args.command)
        with open(args.ready + ".part", "w") as ready:
            ready.write(str(child.pid))
        os.replace(args.ready + ".part", args.ready)
        code = child.wait()
        span.set_attribute("worker.exit_code", code)
        if code != 0:
            span.set_status(Status(StatusCode.ERROR, f"the worker died ({code})"))
            span.set_attribute("http.response.status_code", 500)
        result = ids(span, "error" if code != 0 else "ok")
    tracer_provider.shutdown()
    logger_provider.shutdown()
    print(json.dumps(result), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["requests", "worker"])
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--protocol", choices=["grpc", "http"], required=True)
    parser.add_argument("--ready")
    argv = sys.argv[1:]
    command = []
    if "--" in argv:
        at = argv.index("--")
        argv, command = argv[:at], argv[at + 1 :]
    args = parser.parse_args(argv)
    args.command = command
    if args.mode == "requests":
        requests(args)
    else:
        worker(args)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
