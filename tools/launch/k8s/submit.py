"""Apply rendered manifests with the official `kubernetes` client and follow the job to its end.

Small on purpose: no API server can run on the machines this project is developed on, so this path was
never exercised against a real cluster here (docs/launch.md says so). What is tested here is everything
before it: the kube context check (no context, unknown context) happens before any request is made.
"""

from __future__ import annotations

import os
import sys
import time

from tools.launch.spec import LaunchError

__all__ = ["load_context", "apply", "delete", "follow"]

_POLL_S = 5


def load_context(context: str | None):
    """(ApiClient, namespace) of the kube context; fails naming the fix when there is none."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    # The client reads $KUBECONFIG once, at import; read it now so the current environment decides.
    config_file = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    try:
        contexts, current = config.list_kube_config_contexts(config_file=config_file)
    except (ConfigException, OSError) as exc:
        raise LaunchError(f"no Kubernetes context: {exc}. Point KUBECONFIG at a kubeconfig (or ~/.kube/config) "
                          "and select a context (kubectl config use-context NAME), or pass --context") from None
    names = [c["name"] for c in contexts]
    chosen = next((c for c in contexts if c["name"] == context), None) if context else current
    if chosen is None:
        raise LaunchError(f"no Kubernetes context {context or '(current)'}: the kubeconfig has "
                          f"{', '.join(names) or 'none'}; pass --context with one of them")
    api = config.new_client_from_config(config_file=config_file, context=chosen["name"])
    namespace = chosen.get("context", {}).get("namespace") or "default"
    return api, namespace, client


def apply(api, objects: list[dict], namespace: str) -> list:
    """Creates each object (core kinds and CRDs alike, through the dynamic client); returns the created ones."""
    from kubernetes import dynamic

    dyn = dynamic.DynamicClient(api)
    created = []
    for obj in objects:
        resource = dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        created.append(resource.create(body=obj, namespace=obj["metadata"].get("namespace", namespace)))
        print(f"launch: created {obj['kind']}/{obj['metadata']['name']}", file=sys.stderr)
    return created


def delete(api, objects: list[dict], namespace: str) -> None:
    from kubernetes import dynamic

    dyn = dynamic.DynamicClient(api)
    for obj in objects:
        resource = dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        resource.delete(name=obj["metadata"]["name"], namespace=obj["metadata"].get("namespace", namespace),
                        body={"propagationPolicy": "Foreground"})


def follow(api, client_mod, objects: list[dict], name: str, namespace: str, *, detach: bool) -> int:
    """Streams rank 0's log and waits for the job's pods to finish; Ctrl-C asks whether to delete the job."""
    if detach:
        print(f"launch: detached; follow with kubectl -n {namespace} logs -f -l mlenv.dev/job={name}", file=sys.stderr)
        return 0
    core = client_mod.CoreV1Api(api)
    selector = f"mlenv.dev/job={name}"
    try:
        streamed = False
        while True:
            pods = core.list_namespaced_pod(namespace, label_selector=selector).items
            phases = [p.status.phase for p in pods]
            if not streamed and pods and any(ph in ("Running", "Succeeded", "Failed") for ph in phases):
                first = sorted(pods, key=lambda p: p.metadata.name)[0]
                for line in core.read_namespaced_pod_log(first.metadata.name, namespace, follow=True,
                                                         _preload_content=False).stream():
                    sys.stdout.write(line.decode(errors="replace"))
                streamed = True
                continue
            if pods and all(ph in ("Succeeded", "Failed") for ph in phases):
                failed = phases.count("Failed")
                print(f"launch: {len(pods) - failed} pod(s) succeeded, {failed} failed", file=sys.stderr)
                return 1 if failed else 0
            time.sleep(_POLL_S)
    except KeyboardInterrupt:
        answer = input(f"\nlaunch: delete the job {name} in {namespace}? [y/N] ").strip().lower()
        if answer == "y":
            delete(api, objects, namespace)
            print("launch: deleted", file=sys.stderr)
        return 130
