"""Public: py_grpc_library, Python messages + gRPC stubs compiled from .proto files at build time.

    load("//tools/rules:proto.bzl", "py_grpc_library")

    py_grpc_library(name = "inference_py_grpc", srcs = ["inference.proto"])
    # import: from ml.serving.proto import inference_pb2, inference_pb2_grpc
"""

load("//tools/rules/private:proto.bzl", _py_grpc_library = "py_grpc_library")

py_grpc_library = _py_grpc_library
