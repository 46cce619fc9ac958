"""`tools/bazel run //ml/__project__:serve`: the __project__ SavedModel bundle behind the Open Inference Protocol.

The same gRPC server as every project's (ml/serving/server.py); it imports TensorFlow only because this bundle
is a SavedModel. Flags after `--` go to the server, e.g. `-- --port 9001 --metrics-port 9002`.
"""

import sys

from ml.serving.server import main

if __name__ == "__main__":
    sys.exit(main())
