"""protoc with the gRPC Python plugin, from the locked grpcio-tools (the build-time tool of py_grpc_library).

`--mlenv-private-pool=FILE` (repeatable): after generation, make FILE (a *_pb2.py) register its messages in a
descriptor pool of its own instead of protobuf's process-wide default pool. Needed when another library in
the same process registers the same proto package: e.g. tritonclient registers `inference.*`, the Open
Inference Protocol's package, and two registrations of one symbol in the default pool fail at import time.
The wire format and gRPC method names do not change.
"""

import os
import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

_DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
_PRIVATE_POOL = "_descriptor_pool.DescriptorPool().AddSerializedFile("

if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--mlenv-private-pool=")]
    private = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--mlenv-private-pool=")]
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    code = protoc.main(["protoc", f"-I{well_known}", *args])
    if code:
        sys.exit(code)
    for path in private:
        text = Path(path).read_text()
        if _DEFAULT_POOL not in text:
            sys.exit(f"protoc.py: {path} does not register itself the expected way ({_DEFAULT_POOL!r}); "
                     f"the grpcio-tools version changed the generated code: update tools/rules/private/protoc.py")
        with open(path, "w") as fh:
            fh.write(text.replace(_DEFAULT_POOL, _PRIVATE_POOL))
