"""`--on k8s`: manifests as data (one module per flavour), rendered to YAML, applied and followed.

common.py builds the pieces every flavour shares (labels, env, resources, the torchrun command inside the
image); job.py, rayjob.py, trainjob.py each return a list of plain dicts; submit.py talks to the API server.
"""

from tools.launch.k8s import job, rayjob, trainjob

FLAVORS = {"job": job.render, "rayjob": rayjob.render, "trainjob": trainjob.render}
