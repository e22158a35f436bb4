"""Asks a gRPC server's standard health service (grpc.health.v1), as a Kubernetes gRPC probe
does, with grpcio's own health stub. Prints one line per service: its name (or "(server)")
and the status, or the error code."""

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

channel = grpc.insecure_channel(sys.argv[1])
stub = health_pb2_grpc.HealthStub(channel)
for service in sys.argv[2:]:
    name = service or "(server)"
    try:
        answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        print(name, health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))
    except grpc.RpcError as error:
        print(name, error.code().name)
