#!/usr/bin/env python3
"""Health-checks Confidant services with Python grpcio, a standard gRPC client.

Usage: health_check.py --ca CA [--cert CERT --key KEY] HOST:PORT...
Prints "<target> <STATUS>" per target; exits 0 only if every target is SERVING.
"""
import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("targets", nargs="+")
    args = parser.parse_args()

    def read(path):
        with open(path, "rb") as f:
            return f.read()

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(args.ca),
        private_key=read(args.key) if args.key else None,
        certificate_chain=read(args.cert) if args.cert else None,
    )
    all_serving = True
    for target in args.targets:
        channel = grpc.secure_channel(
            target, credentials, options=[("grpc.ssl_target_name_override", "localhost")]
        )
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=10
            )
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        except grpc.RpcError as error:
            status = "ERROR " + error.code().name
        finally:
            channel.close()
        print(target, status, flush=True)
        all_serving = all_serving and status == "SERVING"
    return 0 if all_serving else 1


if __name__ == "__main__":
    sys.exit(main())
