"""`tools/bazel run //ml/retrieval:serve`: the retrieval SavedModel bundle behind the Open Inference Protocol.

The same server as homefeed's (ml/serving/server.py); TensorFlow is imported only because this bundle is a
SavedModel. Flags after `--` go to the server, e.g. `-- --port 9001 --metrics-port 9002`.
"""

import sys

from ml.serving.server import main

if __name__ == "__main__":
    sys.exit(main())
