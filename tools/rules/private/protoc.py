"""protoc with the gRPC Python plugin, from the locked grpcio-tools (the build-time tool of py_grpc_library)."""

import os
import sys

import grpc_tools
from grpc_tools import protoc

if __name__ == "__main__":
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    sys.exit(protoc.main(["protoc", f"-I{well_known}", *sys.argv[1:]]))
