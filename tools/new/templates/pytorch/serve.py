"""`tools/bazel run //ml/__project__:serve`: the __project__ bundle behind the Open Inference Protocol (gRPC).

Flags after `--` go to the server (ml/serving/server.py), e.g. `-- --port 9001 --metrics-port 9002`.
"""

import sys

from ml.serving.server import main

if __name__ == "__main__":
    sys.exit(main())
