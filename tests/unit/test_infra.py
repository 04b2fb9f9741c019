"""infra/: the manifests load, carry what KubeRay and Kubernetes require, and agree
with each other, with the Dockerfile and with the code they start."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from jobs.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
IMAGE = (INFRA / "IMAGE").read_text().strip()
DOCKERFILE = (INFRA / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
MANIFESTS = sorted(INFRA.glob("*.yaml"))
GPU = "nvidia.com/gpu"
# KubeRay name limits (ray-operator utils: 53 for a RayCluster, 6 less for what makes one).
NAME_LIMITS = {"RayCluster": 53, "RayJob": 47, "RayService": 47}
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((INFRA / name).read_text()) if d is not None]


def _one(name: str, kind: str) -> dict:
    found = [d for d in _docs(name) if d["kind"] == kind]
    assert len(found) == 1, f"{name}: expected one {kind}, found {len(found)}"
    return found[0]


ALL_DOCS = [(path.name, doc) for path in MANIFESTS for doc in _docs(path.name)]
RAYCLUSTER = _one("raycluster.yaml", "RayCluster")
RAYJOB = _one("rayjob-campaign.yaml", "RayJob")
RAYSERVICE = _one("rayservice.yaml", "RayService")
CRONJOB = _one("cronjob-campaign.yaml", "CronJob")
RAYCRONJOB = _one("raycronjob-campaign.yaml", "RayCronJob")
CONFIG = _one("base.yaml", "ConfigMap")


def _cluster_specs() -> dict[str, dict]:
    return {"raycluster.yaml": RAYCLUSTER["spec"], "rayservice.yaml": RAYSERVICE["spec"]["rayClusterConfig"]}


def _pod_specs() -> list[tuple[str, dict]]:
    """Every pod template in infra/, labelled by where it sits."""
    pods = []
    for where, spec in _cluster_specs().items():
        pods.append((f"{where} head", spec["headGroupSpec"]["template"]["spec"]))
        pods += [(f"{where} {g['groupName']}", g["template"]["spec"]) for g in spec["workerGroupSpecs"]]
    pods.append(("rayjob submitter", RAYJOB["spec"]["submitterPodTemplate"]["spec"]))
    pods.append(("cronjob", CRONJOB["spec"]["jobTemplate"]["spec"]["template"]["spec"]))
    pods.append(("raycronjob submitter", RAYCRONJOB["spec"]["jobTemplate"]["submitterPodTemplate"]["spec"]))
    return pods


def _gpus(container: dict) -> int:
    return int(container.get("resources", {}).get("limits", {}).get(GPU, 0))


def _gpu_groups(spec: dict) -> list[dict]:
    return [g for g in spec["workerGroupSpecs"] if any(_gpus(c) for c in g["template"]["spec"]["containers"])]


def _gpus_per_pod(group: dict) -> int:
    return sum(_gpus(c) for c in group["template"]["spec"]["containers"])


def _entrypoint_args() -> list[str]:
    argv = shlex.split(RAYJOB["spec"]["entrypoint"])
    assert argv[:4] == ["python", "-m", "jobs.cli", "run"], argv
    return argv[4:]


def _parse_run(args: list[str]):
    try:
        return build_parser().parse_args(["run", *args])
    except SystemExit as exc:
        pytest.fail(f"rayjob entrypoint args {args} are not valid `paddock run` arguments (exit {exc.code})")


# --------------------------------------------------------------------------- every manifest


def test_infra_has_every_piece():
    assert {p.name for p in MANIFESTS} == {"base.yaml", "raycluster.yaml", "rayjob-campaign.yaml",
                                           "rayservice.yaml", "raycronjob-campaign.yaml", "cronjob-campaign.yaml",
                                           "networkpolicy.yaml"}
    kinds = sorted(d["kind"] for _, d in ALL_DOCS)
    assert kinds == sorted(["ServiceAccount", "ConfigMap", "RayCluster", "RayJob", "RayService", "RayCronJob",
                            "ServiceAccount", "Role", "RoleBinding", "CronJob", "NetworkPolicy", "NetworkPolicy"])


@pytest.mark.parametrize("name,doc", ALL_DOCS, ids=[f"{n}:{d['kind']}" for n, d in ALL_DOCS])
def test_manifest_has_api_version_kind_and_a_valid_name(name, doc):
    expected_api = {"RayCluster": "ray.io/v1", "RayJob": "ray.io/v1", "RayService": "ray.io/v1",
                    "RayCronJob": "ray.io/v1", "NetworkPolicy": "networking.k8s.io/v1", "CronJob": "batch/v1", "Role": "rbac.authorization.k8s.io/v1",
                    "RoleBinding": "rbac.authorization.k8s.io/v1", "ServiceAccount": "v1", "ConfigMap": "v1"}
    assert doc["apiVersion"] == expected_api[doc["kind"]], name
    meta = doc["metadata"]
    name_or_prefix = meta.get("name") or meta.get("generateName", "").rstrip("-")
    assert name_or_prefix, f"{name}: {doc['kind']} has neither metadata.name nor generateName"
    assert DNS1035.match(name_or_prefix), f"{name}: {name_or_prefix!r} is not a DNS-1035 label"
    # generateName adds 5 characters
    length = len(meta["name"]) if "name" in meta else len(meta["generateName"]) + 5
    assert length <= NAME_LIMITS.get(doc["kind"], 63), f"{name}: {doc['kind']} name too long for KubeRay"
    assert meta["labels"]["app.kubernetes.io/name"] == "paddock"
    if doc["kind"] in ("RayCluster", "RayJob", "RayService", "CronJob"):
        assert doc["spec"], f"{name}: {doc['kind']} without a spec"


def test_every_volume_mount_has_a_volume():
    for where, pod in _pod_specs():
        volumes = {v["name"] for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{where}: mount {mount['name']} has no volume"


# --------------------------------------------------------------------------- image and Dockerfile


def test_image_tag_is_the_package_version_and_every_paddock_pod_uses_it():
    assert re.fullmatch(r"[a-z0-9.-]+(/[a-z0-9._-]+)+:[\w.-]+", IMAGE), IMAGE
    assert IMAGE.rsplit(":", 1)[1] == PYPROJECT["project"]["version"]
    for where, pod in _pod_specs():
        for container in pod["containers"]:
            if where == "cronjob":  # the scheduler pod only runs kubectl
                assert container["image"].startswith("registry.k8s.io/kubectl:v")
            else:
                assert container["image"] == IMAGE, f"{where}/{container['name']}: {container['image']} != infra/IMAGE"
    assert '"$(cat infra/IMAGE)"' in DOCKERFILE  # the build command tags from the same file


def test_dockerfile_ray_version_matches_every_cluster():
    ray_version = re.search(r"^ARG RAY_VERSION=(\S+)$", DOCKERFILE, re.M).group(1)
    base = re.search(r"^FROM (\S+)$", DOCKERFILE, re.M).group(1)
    match = re.fullmatch(r"rayproject/ray:\$\{RAY_VERSION\}-py3(\d+)-cu(\d+)", base)
    assert match, f"FROM {base}: expected the rayproject/ray CUDA image for ${{RAY_VERSION}}"
    python_minor = int(match.group(1))
    required_minor = int(re.search(r">=3\.(\d+)", PYPROJECT["project"]["requires-python"]).group(1))
    assert python_minor >= required_minor
    for where, spec in _cluster_specs().items():
        assert spec["rayVersion"] == ray_version, f"{where}: rayVersion {spec['rayVersion']} != Dockerfile {ray_version}"


def test_dockerfile_installs_cuda_torch_before_paddock_and_copies_every_package():
    lines = [line.strip() for line in DOCKERFILE.splitlines()]
    torch_at = next(i for i, line in enumerate(lines) if "pip install" in line and "torch==" in line)
    paddock_at = next(i for i, line in enumerate(lines) if re.search(r"pip install .*\s\.(\s|$)", line))
    assert torch_at < paddock_at
    assert re.search(r"TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cu\d+", DOCKERFILE)
    copied = set(re.findall(r"^COPY .* \./(\w+)$", DOCKERFILE, re.M))
    packages = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= copied, f"Dockerfile does not copy {packages - copied}"
    for package in packages:
        assert (ROOT / package / "__init__.py").is_file()
    ignored = (INFRA / "Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


# --------------------------------------------------------------------------- clusters and GPUs


@pytest.mark.parametrize("where", ["raycluster.yaml", "rayservice.yaml"])
def test_head_is_cpu_only(where):
    head = _cluster_specs()[where]["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    assert head["rayStartParams"]["num-cpus"] == "0"  # drivers and GCS only, no tasks
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    container = head["template"]["spec"]["containers"][0]
    assert _gpus(container) == 0 and GPU not in container["resources"].get("requests", {})
    assert {p["containerPort"] for p in container["ports"]} >= {6379, 8265, 10001}


@pytest.mark.parametrize("where", ["raycluster.yaml", "rayservice.yaml"])
def test_gpu_workers_take_whole_8_gpu_nodes(where):
    groups = _gpu_groups(_cluster_specs()[where])
    assert [g["groupName"] for g in groups] == ["gpu-workers"]
    group = groups[0]
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    pod = group["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["requests"] == container["resources"]["limits"]
    assert _gpus_per_pod(group) == 8
    assert any(t["key"] == GPU for t in pod["tolerations"])
    assert any(m["mountPath"] == "/dev/shm" for m in container["volumeMounts"])


def test_batch_cluster_autoscales_gpus_to_zero():
    spec = RAYCLUSTER["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    gpu = _gpu_groups(spec)[0]
    assert gpu["minReplicas"] == 0 and gpu["maxReplicas"] >= 1
    assert "cpu-workers" in [g["groupName"] for g in spec["workerGroupSpecs"]]


def test_rayjob_runs_the_campaign_entry_with_consistent_flags():
    args = _parse_run(_entrypoint_args())
    assert args.briefs.endswith(".parquet") and args.briefs.startswith("s3://")
    assert args.dam.startswith("s3://")
    assert args.model in ("magihuman-distill", "magihuman-base")
    assert args.tp >= 1 and args.replicas >= 1
    gpu = _gpu_groups(RAYCLUSTER["spec"])[0]
    per_pod = _gpus_per_pod(gpu)
    assert per_pod % args.tp == 0, f"--tp {args.tp} does not divide the {per_pod} GPUs of a pod"
    assert args.tp * args.replicas <= gpu["maxReplicas"] * per_pod, "campaign needs more GPUs than the cluster can grow to"
    # the weights and the workdir are where the GPU pods mount them
    mounts = {m["mountPath"] for m in gpu["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert any(str(args.checkpoint_dir).startswith(m + "/") for m in mounts), args.checkpoint_dir
    head_mounts = {m["mountPath"] for m in RAYCLUSTER["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert any(str(args.workdir).startswith(m + "/") for m in head_mounts), args.workdir


def test_rayjob_targets_the_batch_cluster():
    spec = RAYJOB["spec"]
    assert spec["clusterSelector"] == {"ray.io/cluster": RAYCLUSTER["metadata"]["name"]}
    assert spec["submissionMode"] == "K8sJobMode"
    assert "backoffLimit" not in spec  # KubeRay rejects it with clusterSelector
    assert spec["submitterPodTemplate"]["spec"]["restartPolicy"] == "Never"
    assert "generateName" in RAYJOB["metadata"] and "name" not in RAYJOB["metadata"]


def test_rayservice_builds_the_serve_app_on_exactly_its_gpus():
    serve = yaml.safe_load(RAYSERVICE["spec"]["serveConfigV2"])
    (app,) = serve["applications"]
    module, _, attr_name = app["import_path"].partition(":")
    assert module == "jobs.serve_app" and attr_name == "build_app"
    args = app["args"]
    from jobs.serve_app import ServeConfig

    config = ServeConfig.model_validate(args)  # the app's own contract: no unknown or malformed arg
    assert config.device == "cuda", "auto would decide before the GPU workers have joined"
    cluster = RAYSERVICE["spec"]["rayClusterConfig"]
    (gpu,) = _gpu_groups(cluster)
    assert gpu["minReplicas"] == gpu["replicas"] == gpu["maxReplicas"]
    assert args["tp_size"] * args["replicas"] == gpu["replicas"] * _gpus_per_pod(gpu)
    assert _gpus_per_pod(gpu) % args["tp_size"] == 0
    assert args["dam"].startswith("s3://")
    port = serve["http_options"]["port"]
    for group in [cluster["headGroupSpec"], gpu]:
        assert port in {p["containerPort"] for p in group["template"]["spec"]["containers"][0]["ports"]}


# --------------------------------------------------------------------------- environment


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def test_ray_pods_get_settings_credentials_and_the_service_account():
    assert CONFIG["metadata"]["name"] == "paddock-config"
    assert CONFIG["data"]["OPENLINEAGE_URL"].startswith("http")
    service_accounts = {d["metadata"]["name"] for _, d in ALL_DOCS if d["kind"] == "ServiceAccount"}
    for where, pod in _pod_specs():
        if where in ("rayjob submitter", "raycronjob submitter", "cronjob"):
            continue
        assert pod["serviceAccountName"] == "paddock-ray" and "paddock-ray" in service_accounts, where
        for container in pod["containers"]:
            sources = container["envFrom"]
            assert {"configMapRef": {"name": "paddock-config"}} in sources, where
            assert {"secretRef": {"name": "paddock-aws", "optional": True}} in sources, where


def test_serve_token_comes_from_a_required_secret():
    cluster = RAYSERVICE["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]
    for group in pods:
        token = _env(group["template"]["spec"]["containers"][0])["PADDOCK_API_TOKEN"]
        ref = token["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "paddock-secrets" and ref["key"] == "PADDOCK_API_TOKEN"
        assert not ref.get("optional", False)
        assert "value" not in token


def test_lineage_key_reaches_the_job_driver():
    head = RAYCLUSTER["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    ref = _env(head)["OPENLINEAGE_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "paddock-secrets", "key": "OPENLINEAGE_API_KEY", "optional": True}


# --------------------------------------------------------------------------- schedule


def test_cronjob_creates_the_rayjob_file_from_its_configmap():
    spec = CRONJOB["spec"]
    fields = spec["schedule"].split()
    assert len(fields) == 5
    minute, hour, *rest = fields
    assert minute.isdigit() and hour.isdigit() and rest == ["*", "*", "*"], "expected a daily schedule"
    assert RAYJOB["spec"]["activeDeadlineSeconds"] < 24 * 3600, "a stuck campaign would overlap the next night's"
    assert spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (mount,) = container["volumeMounts"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    configmap = volume["configMap"]["name"]
    assert container["command"] == ["kubectl"]
    assert container["args"] == ["create", "-f", f"{mount['mountPath']}/rayjob-campaign.yaml"]
    # the README's command makes that ConfigMap from the RayJob file, under that key
    readme = (INFRA / "README.md").read_text()
    assert (f"kubectl create configmap {configmap} \\\n"
            f"  --from-file=rayjob-campaign.yaml=infra/rayjob-campaign.yaml") in readme


def test_scheduler_may_create_rayjobs_and_nothing_else():
    (sa,) = [d for n, d in ALL_DOCS if n == "cronjob-campaign.yaml" and d["kind"] == "ServiceAccount"]
    role = _one("cronjob-campaign.yaml", "Role")
    binding = _one("cronjob-campaign.yaml", "RoleBinding")
    pod = CRONJOB["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"]}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    (rule,) = role["rules"]
    assert rule["apiGroups"] == ["ray.io"] and rule["resources"] == ["rayjobs"]
    assert "create" in rule["verbs"] and not {"delete", "update", "patch", "*"} & set(rule["verbs"])


# --------------------------------------------------------------------------- README


def test_readme_names_every_file_the_knobs_and_the_apply_order():
    readme = (INFRA / "README.md").read_text()
    for path in [*MANIFESTS, INFRA / "Dockerfile", INFRA / "IMAGE"]:
        assert f"`{path.name}`" in readme, f"infra/README.md does not describe {path.name}"
    for knob in ("tp_size", "replicas", "bucket", "OPENLINEAGE_URL", "placeholder registry"):
        assert knob in readme
    order = [readme.index(step) for step in (
        "helm install kuberay-operator", "docker build -f infra/Dockerfile", "kubectl create secret generic paddock-secrets",
        "kubectl create secret generic paddock-ray-token", "kubectl apply -f infra/base.yaml",
        "kubectl apply -f infra/networkpolicy.yaml", "kubectl apply -f infra/raycluster.yaml",
        "kubectl create -f infra/rayjob-campaign.yaml", "kubectl apply -f infra/raycronjob-campaign.yaml",
        "kubectl create configmap paddock-campaign-rayjob", "kubectl apply -f infra/cronjob-campaign.yaml")]
    assert order == sorted(order), "infra/README.md lists the steps out of order"


def test_submitted_jobs_run_the_cli_itself():
    from jobs.submit import campaign_entrypoint

    for job, command in (("run_campaign", "run"), ("localize", "localize")):
        argv = shlex.split(campaign_entrypoint(job, ["s3://b/briefs.parquet", "--dam", "s3://d/p", "--tp", "2"]))
        assert argv[:4] == ["python", "-m", "jobs.cli", command]
        parsed = build_parser().parse_args(argv[3:])
        assert parsed.command == command and parsed.tp == 2


# --------------------------------------------------------------------------- against KubeRay's CRD schemas


CRDS = {kind: json.loads((ROOT / "tests" / "data" / "kuberay" / f"{kind.lower()}s.v1.json").read_text())
        for kind in ("RayCluster", "RayJob", "RayService", "RayCronJob")}


def _as_kubectl_validates(schema: dict) -> dict:
    """The CRD schema as a JSON Schema that, like kubectl apply's server-side field validation,
    refuses unknown fields unless the schema preserves them, and takes int-or-string fields."""
    if isinstance(schema, list):
        return [_as_kubectl_validates(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _as_kubectl_validates(v) for k, v in schema.items() if not k.startswith("x-kubernetes")}
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields") \
            and "additionalProperties" not in schema:
        out["additionalProperties"] = False
    return out


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_ray_resources_validate_against_the_kuberay_crd_schema(kind):
    import jsonschema

    assert CRDS[kind]["kind"] == kind
    schema = _as_kubectl_validates(CRDS[kind]["schema"])
    docs = [(name, doc) for name, doc in ALL_DOCS if doc["kind"] == kind]
    assert docs, f"no {kind} in infra/"
    for name, doc in docs:
        errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
        assert not errors, f"{name}: " + "; ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors[:5])


def test_the_kubectl_style_schema_refuses_an_unknown_field():
    import jsonschema

    schema = _as_kubectl_validates(CRDS["RayCronJob"]["schema"])
    wrong = {**RAYCRONJOB, "spec": {**RAYCRONJOB["spec"], "concurrencyPolicy": "Forbid"}}
    assert any("concurrencyPolicy" in e.message for e in jsonschema.Draft7Validator(schema).iter_errors(wrong))


def test_the_nightly_raycronjob_runs_the_campaign_rayjob_and_the_cronjob_stays_its_fallback():
    spec = RAYCRONJOB["spec"]
    assert spec["jobTemplate"] == RAYJOB["spec"], "raycronjob-campaign.yaml jobTemplate differs from rayjob-campaign.yaml"
    assert (spec["schedule"], spec["timeZone"], spec["suspend"]) == (CRONJOB["spec"]["schedule"],
                                                                     CRONJOB["spec"]["timeZone"], False)
    # a stuck run ends before the next one starts: one campaign at a time per DAM prefix
    assert spec["jobTemplate"]["activeDeadlineSeconds"] < 24 * 3600
    readme = (INFRA / "README.md").read_text()
    assert "fallback" in readme and "KubeRay before 1.6" in readme


def test_ray_token_authentication_on_both_clusters_and_their_submitters():
    for where, spec in _cluster_specs().items():
        assert spec["authOptions"] == {"mode": "token", "secretName": "paddock-ray-token"}, where
    for template in (RAYJOB["spec"], RAYCRONJOB["spec"]["jobTemplate"]):
        (container,) = template["submitterPodTemplate"]["spec"]["containers"]
        env = _env(container)
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "paddock-ray-token", "key": "auth_token"}


def test_network_policies_admit_only_the_submitter_and_the_serve_ingress():
    policies = {d["metadata"]["name"]: d["spec"] for n, d in ALL_DOCS if d["kind"] == "NetworkPolicy"}
    batch, serve_ = policies["paddock-batch-cluster"], policies["paddock-serve-cluster"]
    assert batch["podSelector"]["matchLabels"] == {"ray.io/cluster": RAYCLUSTER["metadata"]["name"]}
    assert serve_["podSelector"]["matchLabels"]["ray.io/originated-from-cr-name"] == RAYSERVICE["metadata"]["name"]
    for spec in (batch, serve_):
        assert spec["policyTypes"] == ["Ingress"]
        own, outside = spec["ingress"]
        assert own == {"from": [{"podSelector": spec["podSelector"]}]}  # the cluster's own pods
        assert len(outside["ports"]) == 1 and outside["ports"][0]["protocol"] == "TCP"
    (batch_from,) = batch["ingress"][1]["from"]
    submitter_labels = RAYJOB["spec"]["submitterPodTemplate"]["metadata"]["labels"]
    assert batch_from["podSelector"]["matchLabels"].items() <= submitter_labels.items()
    assert batch["ingress"][1]["ports"][0]["port"] == 8265
    assert serve_["ingress"][1]["ports"][0]["port"] == 8000  # Serve's HTTP port, not the dashboard
    assert "namespaceSelector" in serve_["ingress"][1]["from"][0]


def test_the_documented_iam_policy_and_lifecycle_rule_cover_multipart_uploads():
    readme = (INFRA / "README.md").read_text()
    policy = json.loads(readme.split("```json", 1)[1].split("```", 1)[0])
    dam_actions = {a for s in policy["Statement"] for a in s["Action"] if "paddock-dam" in json.dumps(s["Resource"])}
    assert {"s3:PutObject", "s3:GetObject", "s3:PutObjectTagging", "s3:AbortMultipartUpload",
            "s3:ListBucket"} <= dam_actions
    lifecycle = json.loads(readme.split("```json", 2)[2].split("```", 1)[0])
    (rule,) = lifecycle["Rules"]
    assert rule["Status"] == "Enabled" and rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] >= 1
