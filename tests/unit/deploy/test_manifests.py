"""Offline checks of the deployment files: the image (config/container) and the Kubernetes
manifests (config/kubernetes). No cluster and no Docker daemon are needed.

What is checked here, by our own code: every manifest parses and is the kind expected;
the Guaranteed-QoS invariant (requests == limits for cpu and memory, an integer cpu
count) for every container of the Deployment and the KServe InferenceService; probes on
/ping; the security context; Prometheus annotations; that every path TorchServe writes
is an emptyDir under the read-only root; how the worker count follows the pod's CPUs;
the kubelet's CPU/topology/memory manager settings; the Dockerfile's torch pin, user,
health check and entrypoint; the entrypoint script (bash -n, shellcheck, exec).

Then two outside validators, each skipped with its reason when it is missing:
kubernetes-validate (the API schemas, strict: unknown fields are errors) and checkov
(policy checks; the chosen list is below, with the reason for each one left out).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
KUBE = ROOT / "config" / "kubernetes"
CONTAINER = ROOT / "config" / "container"
DOCKERFILE = CONTAINER / "Dockerfile"
ENTRYPOINT = CONTAINER / "entrypoint.sh"
HEALTHCHECK = CONTAINER / "healthcheck.py"
IMAGE_CONFIG = CONTAINER / "config.properties"

EXPECTED_KINDS = {
    "ConfigMap": "v1",
    "Deployment": "apps/v1",
    "Service": "v1",
    "HorizontalPodAutoscaler": "autoscaling/v2",
    "NetworkPolicy": "networking.k8s.io/v1",
    "InferenceService": "serving.kserve.io/v1beta1",
    "KubeletConfiguration": "kubelet.config.k8s.io/v1beta1",
}
INFERENCE_PORT = 8080
METRICS_PORT = 8082

# checkov checks that must run and pass. Every check named here must also report a
# result (a check that silently matched nothing would prove nothing).
CHECKOV_K8S_CHECKS = (
    "CKV_K8S_8",  # liveness probe
    "CKV_K8S_9",  # readiness probe
    "CKV_K8S_10",  # CPU requests
    "CKV_K8S_11",  # CPU limits
    "CKV_K8S_12",  # memory requests
    "CKV_K8S_13",  # memory limits
    "CKV_K8S_14",  # image tag fixed, not latest
    "CKV_K8S_15",  # imagePullPolicy Always
    "CKV_K8S_16",  # not privileged
    "CKV_K8S_17",  # no host PID namespace
    "CKV_K8S_18",  # no host IPC namespace
    "CKV_K8S_19",  # no host network
    "CKV_K8S_20",  # allowPrivilegeEscalation false
    "CKV_K8S_22",  # read-only root filesystem
    "CKV_K8S_23",  # no root containers (runAsNonRoot)
    "CKV_K8S_25",  # no added capabilities
    "CKV_K8S_28",  # no NET_RAW
    "CKV_K8S_29",  # pod security context
    "CKV_K8S_30",  # container security context
    "CKV_K8S_31",  # seccomp RuntimeDefault
    "CKV_K8S_37",  # capabilities dropped (ALL)
    "CKV_K8S_38",  # no service account token mounted
    "CKV_K8S_39",  # no CAP_SYS_ADMIN
    "CKV_K8S_40",  # high UID
    "CKV2_K8S_6",  # the pods are covered by a NetworkPolicy
)
# Deliberately not required:
# - CKV_K8S_21 (no default namespace): the manifests carry no namespace on purpose, so
#   they apply to whichever one `kubectl apply -n NAMESPACE` names.
# - CKV_K8S_43 (image by digest): the image is built by the user from this repo, so no
#   digest exists to write down; the manifest says to pin one in production.
# - CKV_K8S_35 (secrets as files): there are no secrets to check.
# - CKV_K8S_68..CKV_K8S_151: API server, controller manager, etcd and kubelet command-line
#   flags; none of those components is deployed here.
# checkov does not analyse the InferenceService (a custom resource); the tests above check
# it with the same rules as the Deployment.

CHECKOV_DOCKER_CHECKS = (
    "CKV_DOCKER_1",  # port 22 not exposed
    "CKV_DOCKER_2",  # HEALTHCHECK present
    "CKV_DOCKER_3",  # a non-root USER is created
    "CKV_DOCKER_5",  # no lone `apt-get update`
    "CKV_DOCKER_8",  # the last USER is not root
    "CKV_DOCKER_9",  # apt-get, not apt
    "CKV_DOCKER_10",  # absolute WORKDIR
    "CKV_DOCKER_11",  # unique FROM aliases
    "CKV2_DOCKER_1",  # no sudo
    "CKV2_DOCKER_4",  # no pip --trusted-host
    "CKV2_DOCKER_8",  # no apt-get --allow-unauthenticated
    "CKV2_DOCKER_11",  # no --force-yes
    "CKV2_DOCKER_16",  # no PIP_TRUSTED_HOST
)
# Not required: CKV_DOCKER_7 (base image tag not latest): checkov reads `FROM ${BASE_IMAGE}`
# as an image without a tag; the argument's default, python:3.11-slim-bookworm, is a fixed
# tag, asserted by test_dockerfile_base_and_packages. CKV_DOCKER_4 (COPY instead of ADD)
# and CKV_DOCKER_6 (no MAINTAINER) report nothing when the instruction is absent, as it is
# here; the Dockerfile tests below check the pins and the user themselves. Base image
# digest pinning is not a checkov check; the tag is fixed (python:3.11-slim-bookworm) so
# that security updates of the base arrive.


# --- loading -------------------------------------------------------------------------


def manifest_files() -> list[Path]:
    return sorted(KUBE.glob("*.yaml"))


def load_documents() -> list[tuple[Path, dict]]:
    documents = []
    for path in manifest_files():
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                documents.append((path, document))
    return documents


DOCUMENTS = load_documents()


def one(kind: str) -> dict:
    found = [doc for _, doc in DOCUMENTS if doc.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} in {KUBE}, found {len(found)}"
    return found[0]


def workloads() -> dict[str, dict]:
    """The pod specs that run TorchServe: the Deployment's and the InferenceService's
    predictor (a pod spec with KServe's extra fields)."""
    return {
        "Deployment": one("Deployment")["spec"]["template"]["spec"],
        "InferenceService": one("InferenceService")["spec"]["predictor"],
    }


def all_containers(pod: dict) -> list[dict]:
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def main_container(pod: dict) -> dict:
    containers = pod["containers"]
    assert len(containers) == 1, "one TorchServe container per pod"
    return containers[0]


def doc_id(item: tuple[Path, dict]) -> str:
    path, doc = item
    name = doc.get("metadata", {}).get("name", "-")
    return f"{path.name}:{doc.get('kind')}/{name}"


def parse_properties(text: str) -> dict[str, str]:
    """key=value lines of a config.properties (no continuations are used in ours)."""
    properties = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, _, value = line.partition("=")
        properties[key.strip()] = value.strip()
    return properties


def configmap_properties() -> dict[str, str]:
    return parse_properties(one("ConfigMap")["data"]["config.properties"])


# --- Kubernetes quantities -----------------------------------------------------------

_SUFFIXES = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
}


def quantity(value: object) -> Decimal:
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)", str(value).strip())
    assert match and match.group(2) in _SUFFIXES, f"not a Kubernetes quantity: {value!r}"
    return Decimal(match.group(1)) * _SUFFIXES[match.group(2)]


def test_quantity_parser() -> None:
    assert quantity("4") == quantity(4) == quantity("4000m") == 4
    assert quantity("8Gi") == 8 * 2**30
    assert quantity("1124Mi") == quantity("512Mi") + quantity("512Mi") + quantity("100Mi")
    assert quantity("500m") == Decimal("0.5")


# --- Dockerfile ----------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comment lines dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        if line:
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def dockerfile_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in stage:
        if keyword == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", rest):
                env[key] = value
    return env


def workdir() -> str:
    return [rest for keyword, rest in final_stage() if keyword == "WORKDIR"][-1]


def global_args() -> dict[str, str]:
    """ARGs before the first FROM (the only ones a FROM line may use)."""
    found: dict[str, str] = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == "FROM":
            break
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            found[name] = default
    return found


def test_dockerfile_base_and_packages() -> None:
    """One base for both stages, chosen by BASE_IMAGE (default python:3.11-slim-bookworm),
    so a build machine without that image can name a stand-in (scripts/container.sh)."""
    froms = [rest for keyword, rest in dockerfile_instructions() if keyword == "FROM"]
    assert global_args() == {"BASE_IMAGE": "python:3.11-slim-bookworm"}  # a fixed tag
    assert [image.split()[0] for image in froms] == ["${BASE_IMAGE}", "${BASE_IMAGE}"]
    runs = " ".join(rest for keyword, rest in final_stage() if keyword == "RUN")
    assert "apt-get install -y --no-install-recommends" in runs
    for package in ("openjdk-17-jre-headless", "libgoogle-perftools4", "libjemalloc2"):
        assert package in runs, f"{package} is not installed in the final image"
    assert "rm -rf /var/lib/apt/lists/*" in runs


def test_dockerfile_pins_torch_and_never_installs_it_unpinned() -> None:
    instructions = dockerfile_instructions()
    args = dict(
        rest.split("=", 1) for keyword, rest in instructions if keyword == "ARG" and "=" in rest
    )
    # pip's own settings come in as build arguments with no value: nothing of one build
    # machine is written into the Dockerfile
    bare = {rest for keyword, rest in instructions if keyword == "ARG" and "=" not in rest}
    assert bare == {"PIP_INDEX_URL", "PIP_FIND_LINKS", "PIP_CERT"}
    assert re.fullmatch(r"torch==\d+\.\d+\.\d+(\+cpu)?", args["TORCH_SPEC"]), args
    assert args["TORCH_SPEC"].startswith("torch==2.13.0")
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    runs = [rest for keyword, rest in instructions if keyword == "RUN"]
    pip_runs = [run for run in runs if "pip install" in run]
    assert pip_runs, "no pip install in the Dockerfile"
    torch_run = [run for run in pip_runs if "$TORCH_SPEC" in run]
    assert len(torch_run) == 1, "torch is installed once, from TORCH_SPEC"
    # the CPU index by default; an empty TORCH_INDEX_URL leaves it to pip's settings
    assert '${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}' in torch_run[0]
    # and the build stops unless the torch installed is a CPU build
    assert "torch.version.cuda" in torch_run[0]
    # the build refuses a TORCH_SPEC that is not a pin
    assert re.search(r'case "\$TORCH_SPEC" in\s+torch==\[0-9\]\*\)', torch_run[0])
    for run in pip_runs:
        for command in re.split(r"&&|;", run):
            if "pip install" not in command:
                continue
            words = command.split()
            for word in words:
                bare = word.strip("\"'")
                if re.fullmatch(r"torch(\[.*\])?([<>=!~].*)?", bare):
                    assert "==" in bare, f"unpinned torch in: {command.strip()}"
                assert not re.fullmatch(r"torch(vision|audio)\S*", bare), command
            if "$TORCH_SPEC" not in command:  # everything else is held to the pin
                assert "--constraint" in words or "-c" in words, (
                    f"pip install without the torch constraint: {command.strip()}"
                )
    assert any("printf '%s\\n' \"$TORCH_SPEC\" >" in run for run in runs)


def test_dockerfile_runtime_settings() -> None:
    stage = final_stage()
    keywords = [keyword for keyword, _ in stage]
    users = [rest for keyword, rest in stage if keyword == "USER"]
    assert users and re.fullmatch(r"\d+:\d+", users[-1]), "numeric non-root USER uid:gid"
    assert int(users[-1].split(":")[0]) >= 10000
    exposed = {int(p) for rest in (r for k, r in stage if k == "EXPOSE") for p in rest.split()}
    assert exposed == {8080, 8081, 8082}
    healthcheck = [rest for keyword, rest in stage if keyword == "HEALTHCHECK"]
    assert len(healthcheck) == 1 and "CMD" in healthcheck[0]
    assert f"http://127.0.0.1:{INFERENCE_PORT}/ping" in healthcheck[0]
    assert "--start-period=" in healthcheck[0]
    assert [rest for keyword, rest in stage if keyword == "STOPSIGNAL"] == ["SIGTERM"]
    entrypoint = [rest for keyword, rest in stage if keyword == "ENTRYPOINT"]
    assert len(entrypoint) == 1
    command = json.loads(entrypoint[0])  # exec form: no /bin/sh -c in front of the script
    assert command == ["/usr/local/bin/torchserve-cpu-entrypoint"]
    copies = [rest for keyword, rest in stage if keyword == "COPY"]
    assert any(
        "config/container/entrypoint.sh /usr/local/bin/torchserve-cpu-entrypoint" in c
        for c in copies
    )
    assert "CMD" not in keywords, "arguments go to serve; no default CMD"
    env = dockerfile_env(stage)
    assert env["TS_CONFIG_FILE"] == "/home/model-server/config.properties"
    assert env["TSCPU_MODEL_STORE"] == "/models"  # docker run -v STORE:/models
    assert env["PATH"].startswith("/opt/venv/bin:"), "workers run the venv's python"
    assert workdir().startswith("/home/model-server/")


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = (CONTAINER / "Dockerfile.dockerignore").read_text().split()
    for entry in (".git", ".venv", "model_store/build", "benchmarks/results"):
        assert entry in ignored


def test_image_config_properties() -> None:
    properties = parse_properties(IMAGE_CONFIG.read_text())
    for key in ("inference_address", "management_address", "metrics_address"):
        assert properties[key].startswith("http://0.0.0.0:"), key
    assert properties["inference_address"].endswith(f":{INFERENCE_PORT}")
    assert properties["metrics_address"].endswith(f":{METRICS_PORT}")
    assert properties["cpu_launcher_enable"] == "true"
    assert properties["model_store"] == dockerfile_env(final_stage())["TSCPU_MODEL_STORE"]
    assert properties["load_models"] == "all"
    assert properties["metrics_mode"] == "prometheus"
    assert properties["enable_model_api"] == "false"
    # token authorization is the user's decision: TorchServe's default (on) stays
    assert "disable_token_authorization" not in properties


# --- entrypoint ----------------------------------------------------------------------


def test_entrypoint_parses_with_bash() -> None:
    result = subprocess.run(["bash", "-n", str(ENTRYPOINT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_entrypoint_shellcheck_clean() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (Debian: apt-get install shellcheck)")
    result = subprocess.run(["shellcheck", str(ENTRYPOINT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_entrypoint_execs_serve() -> None:
    """Static: every command is started with exec, the last one is `torchserve-cpu serve`,
    and no trap or background job keeps a shell between the signal and serve."""
    text = ENTRYPOINT.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    code = [line.strip() for line in text.splitlines() if line.strip() and
            not line.strip().startswith("#")]
    assert code[0] == "set -euo pipefail"
    assert code[-1].startswith('exec torchserve-cpu serve --ts-config "$TS_CONFIG_FILE"')
    assert code[-1].endswith('"$@"')
    assert "trap" not in text and not re.search(r"&\s*$", text, re.MULTILINE)
    assert os.access(ENTRYPOINT, os.X_OK), "entrypoint.sh must be executable"


def fake_bin(tmp_path: Path) -> Path:
    """A torchserve-cpu that prints its pid and arguments."""
    folder = tmp_path / "bin"
    folder.mkdir()
    fake = folder / "torchserve-cpu"
    fake.write_text('#!/bin/sh\necho "pid=$$ TS_CONFIG_FILE=$TS_CONFIG_FILE"\n'
                    'for a in "$@"; do echo "arg=$a"; done\n')
    fake.chmod(0o755)
    return folder


def run_entrypoint(tmp_path: Path, *args: str, **env: str) -> tuple[int, list[str]]:
    environ = {"PATH": f"{fake_bin(tmp_path)}:/usr/bin:/bin", **env}
    process = subprocess.Popen(["bash", str(ENTRYPOINT), *args], env=environ,
                               stdout=subprocess.PIPE, text=True)
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    return process.pid, out.splitlines()


def test_entrypoint_replaces_itself_with_serve(tmp_path: Path) -> None:
    pid, lines = run_entrypoint(tmp_path, "--models", "a.mar", "b.mar")
    # exec: the process the container runtime started (and signals) *is* serve
    assert lines[0] == f"pid={pid} TS_CONFIG_FILE=/home/model-server/config.properties"
    assert [line[4:] for line in lines[1:]] == [
        "serve", "--ts-config", "/home/model-server/config.properties",
        "--model-store", "/models", "--models", "a.mar", "b.mar",
    ]


def test_entrypoint_takes_config_and_store_from_env(tmp_path: Path) -> None:
    _, lines = run_entrypoint(tmp_path, TS_CONFIG_FILE="/etc/ts/c.properties",
                              TSCPU_MODEL_STORE="/models")
    assert lines[0].endswith("TS_CONFIG_FILE=/etc/ts/c.properties")
    assert [line[4:] for line in lines[1:]] == [
        "serve", "--ts-config", "/etc/ts/c.properties", "--model-store", "/models",
    ]


def test_entrypoint_runs_other_commands(tmp_path: Path) -> None:
    pid, lines = run_entrypoint(tmp_path, "torchserve-cpu", "doctor")
    assert lines == [f"pid={pid} TS_CONFIG_FILE=/home/model-server/config.properties",
                     "arg=doctor"]


# --- healthcheck.py ------------------------------------------------------------------


def load_healthcheck(key_file: Path, management_url: str):
    spec = importlib.util.spec_from_file_location("tscpu_healthcheck", HEALTHCHECK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.KEY_FILE = key_file
    module.MANAGEMENT_URL = management_url
    module.METRICS_URL = management_url
    return module


class FakeTorchServe:
    """/ping, /token, the management API's /models and the metrics API's /metrics on one
    loopback port, token checks as TorchServe 0.12 does them. Model "tiny" wants two
    workers (9000, 9001), both connected; `loaded` names those whose model is loaded
    (TorchServe's WorkerLoadTime series)."""

    def __init__(self, key_file: Path | None) -> None:
        self.key_file = key_file
        self.inference_key = "inference-1"
        self.renewals = 0
        self.loaded = {"9000", "9001"}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def reply(self, status: int, body: object = None) -> None:
                data = b"" if body is None else (
                    body.encode() if isinstance(body, str) else json.dumps(body).encode())
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                management = fake.key_file is None or token == "m"
                if self.path.startswith("/token?type=inference") and token == "api-key":
                    fake.renewals += 1
                    fake.inference_key = f"inference-{fake.renewals + 1}"
                    fake.write_keys(expired=False)
                    self.reply(200)
                elif self.path == "/ping" and (
                    fake.key_file is None or token == fake.inference_key
                ):
                    self.reply(200)
                elif self.path == "/models?limit=1000" and management:
                    self.reply(200, {"models": [{"modelName": "tiny"}]})
                elif self.path == "/models/tiny" and management:
                    workers = [{"id": i, "status": "READY"} for i in ("9000", "9001")]
                    self.reply(200, [{"modelVersion": "1.0", "minWorkers": 2,
                                      "workers": workers}])
                elif self.path == "/metrics":
                    self.reply(200, "".join(
                        f'WorkerLoadTime{{WorkerName="W-{i}-tiny_1.0",Level="Host",}} 9.0\n'
                        for i in sorted(fake.loaded)))
                else:
                    self.reply(400)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def write_keys(self, expired: bool) -> None:
        when = datetime.now(timezone.utc) + timedelta(minutes=-5 if expired else 60)
        stamp = when.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"  # Java's Instant: 9 digits
        self.key_file.write_text(json.dumps({
            "management": {"key": "m", "expiration time": stamp},
            "inference": {"key": self.inference_key, "expiration time": stamp},
            "API": {"key": "api-key"},
        }))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_server(tmp_path: Path) -> Iterator[FakeTorchServe]:
    server = FakeTorchServe(tmp_path / "key_file.json")
    yield server
    server.close()


def test_healthcheck_without_tokens(tmp_path: Path, fake_server: FakeTorchServe) -> None:
    fake_server.key_file = None  # disable_token_authorization=true: no key file
    check = load_healthcheck(tmp_path / "key_file.json", fake_server.url)
    assert check.main(["healthcheck", f"{fake_server.url}/ping"]) == 0
    assert check.main(["healthcheck", f"{fake_server.url}/other"]) == 1


def test_healthcheck_sends_the_inference_key(tmp_path: Path,
                                              fake_server: FakeTorchServe) -> None:
    fake_server.write_keys(expired=False)
    check = load_healthcheck(fake_server.key_file, fake_server.url)
    assert check.main(["healthcheck", f"{fake_server.url}/ping"]) == 0
    assert fake_server.renewals == 0


def test_healthcheck_renews_an_expired_key(tmp_path: Path, fake_server: FakeTorchServe) -> None:
    fake_server.write_keys(expired=True)
    check = load_healthcheck(fake_server.key_file, fake_server.url)
    assert check.main(["healthcheck", f"{fake_server.url}/ping"]) == 0
    assert fake_server.renewals == 1


@pytest.mark.parametrize("tokens", [True, False])
def test_healthcheck_readiness_waits_for_every_worker(tmp_path: Path, tokens: bool,
                                                      fake_server: FakeTorchServe) -> None:
    """/ping answers 200 while workers still load: readiness also needs each model's
    minWorkers workers with their model loaded."""
    if tokens:
        fake_server.write_keys(expired=False)
    else:
        fake_server.key_file = None
    check = load_healthcheck(tmp_path / "key_file.json", fake_server.url)
    check.DRAIN_FILE = tmp_path / "draining"
    url = f"{fake_server.url}/ping"
    fake_server.loaded = {"9000"}
    assert check.main(["healthcheck", url]) == 0, "liveness: /ping is enough"
    assert check.main(["healthcheck", "--ready", url]) == 1
    fake_server.loaded = {"9000", "9001"}
    assert check.main(["healthcheck", "--ready", url]) == 0


def test_healthcheck_readiness_fails_once_draining(tmp_path: Path,
                                                   fake_server: FakeTorchServe) -> None:
    fake_server.write_keys(expired=False)
    check = load_healthcheck(fake_server.key_file, fake_server.url)
    check.DRAIN_FILE = tmp_path / "draining"
    url = f"{fake_server.url}/ping"
    assert check.main(["healthcheck", "--ready", url]) == 0
    assert check.main(["healthcheck", "--drain", "0.01"]) == 0
    assert check.DRAIN_FILE.exists()
    assert check.main(["healthcheck", "--ready", url]) == 1
    assert check.main(["healthcheck", url]) == 0, "liveness is not affected by the drain"


def test_healthcheck_fails_when_nothing_listens(tmp_path: Path) -> None:
    check = load_healthcheck(tmp_path / "key_file.json", "http://127.0.0.1:9")
    assert check.main(["healthcheck", "http://127.0.0.1:9/ping"]) == 1


# --- manifests: our own rules ----------------------------------------------------------


def test_every_manifest_parses_and_is_expected() -> None:
    kinds = {doc["kind"]: doc["apiVersion"] for _, doc in DOCUMENTS}
    assert kinds == EXPECTED_KINDS
    for path, doc in DOCUMENTS:
        if doc["kind"] != "KubeletConfiguration":
            assert doc["metadata"]["name"].startswith("torchserve-cpu"), path
            assert "namespace" not in doc["metadata"], "namespace comes from kubectl -n"


@pytest.mark.parametrize("workload", ["Deployment", "InferenceService"])
def test_guaranteed_qos(workload: str) -> None:
    """Guaranteed QoS for the whole pod: every container (init containers too) has cpu
    and memory requests equal to its limits, and the cpu is a whole number, which the
    static CPU manager needs to give the container exclusive cores."""
    pod = workloads()[workload]
    for container in all_containers(pod):
        resources = container.get("resources", {})
        requests, limits = resources.get("requests", {}), resources.get("limits", {})
        for resource in ("cpu", "memory"):
            assert resource in requests and resource in limits, (container["name"], resource)
            assert quantity(requests[resource]) == quantity(limits[resource]), (
                f"{workload}/{container['name']}: {resource} requests != limits"
            )
        cpus = quantity(limits["cpu"])
        assert cpus >= 1 and cpus == cpus.to_integral_value(), (
            f"{workload}/{container['name']}: cpu {limits['cpu']!r} is not a whole number"
        )


def test_inferenceservice_has_the_deployments_resources_and_env() -> None:
    deployment = main_container(workloads()["Deployment"])
    predictor = main_container(workloads()["InferenceService"])
    assert predictor["resources"] == deployment["resources"]
    assert predictor["image"] == deployment["image"]
    assert predictor["securityContext"] == deployment["securityContext"]

    def env(container: dict) -> list:
        """The env with each resourceFieldRef's containerName (its own) made neutral."""
        entries = json.loads(json.dumps(container["env"]))
        for entry in entries:
            field = entry.get("valueFrom", {}).get("resourceFieldRef")
            if field:
                assert field["containerName"] == container["name"]
                field["containerName"] = "<self>"
        return entries

    assert env(predictor) == env(deployment)
    assert workloads()["InferenceService"]["volumes"] == workloads()["Deployment"]["volumes"]


def port_number(container: dict, port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    assert port in named, f"probe port {port!r} is not a named port of {container['name']}"
    return named[port]


IMAGE_HEALTHCHECK = "/usr/local/lib/torchserve-cpu/healthcheck.py"
SERVE_STOP_S = 60 + 10  # serve: TorchServe's shutdown, then its leftover workers


def healthcheck_command(spec: dict) -> list[str]:
    command = [str(word) for word in spec["exec"]["command"]]
    assert command[:2] == ["python", IMAGE_HEALTHCHECK], command
    return command[2:]


@pytest.mark.parametrize("workload", ["Deployment", "InferenceService"])
def test_probes_on_ping(workload: str) -> None:
    """Startup and liveness: /ping. Readiness: /ping through the image's health check,
    which fails as soon as the preStop hook starts draining."""
    container = main_container(workloads()[workload])
    for probe in ("startupProbe", "livenessProbe"):
        spec = container[probe]
        assert spec["httpGet"]["path"] == "/ping", probe
        assert port_number(container, spec["httpGet"]["port"]) == INFERENCE_PORT, probe
    assert healthcheck_command(container["readinessProbe"]) == ["--ready"]
    assert any(f"{IMAGE_HEALTHCHECK}" in rest for keyword, rest in final_stage()
               if keyword == "COPY"), "the probe's script is in the image"
    startup = container["startupProbe"]
    # models are optimized while they load: at least 10 minutes before liveness starts
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 60


@pytest.mark.parametrize("workload", ["Deployment", "InferenceService"])
def test_rolling_update_stop(workload: str) -> None:
    """What makes a rolling update lose nothing: the preStop hook drains (readiness fails,
    requests still answered) longer than readiness needs to notice, and the grace period
    holds the drain plus serve's longest stop; maxUnavailable 0 keeps the old pod until
    the new one is ready."""
    pod = workloads()[workload]
    container = main_container(pod)
    drain = healthcheck_command(container["lifecycle"]["preStop"])
    assert drain[0] == "--drain"
    drain_s = float(drain[1])
    readiness = container["readinessProbe"]
    noticed_s = readiness["periodSeconds"] * readiness["failureThreshold"]
    assert noticed_s < drain_s, "readiness must fail while the pod still serves"
    assert pod["terminationGracePeriodSeconds"] >= drain_s + SERVE_STOP_S
    if workload == "Deployment":
        rolling = one("Deployment")["spec"]["strategy"]["rollingUpdate"]
        assert rolling["maxUnavailable"] == 0 and rolling["maxSurge"] >= 1


@pytest.mark.parametrize("workload", ["Deployment", "InferenceService"])
def test_security_context(workload: str) -> None:
    pod = workloads()[workload]
    pod_context = pod["securityContext"]
    assert pod_context["runAsNonRoot"] is True
    assert pod.get("automountServiceAccountToken") is False
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(host), host
    image_uid = int([r for k, r in final_stage() if k == "USER"][-1].split(":")[0])
    for container in all_containers(pod):
        context = container["securityContext"]
        assert context.get("privileged", False) is False
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context.get("runAsNonRoot", pod_context["runAsNonRoot"]) is True
        assert context["capabilities"]["drop"] == ["ALL"]
        assert not context["capabilities"].get("add")
        seccomp = context.get("seccompProfile", pod_context.get("seccompProfile"))
        assert seccomp == {"type": "RuntimeDefault"}
        uid = context.get("runAsUser", pod_context.get("runAsUser"))
        assert uid == image_uid and uid >= 10000


@pytest.mark.parametrize("workload", ["Deployment", "InferenceService"])
def test_writable_paths_are_emptydir(workload: str) -> None:
    """Under readOnlyRootFilesystem every place TorchServe writes must be a volume: /tmp
    (archives unpacked, worker sockets, JVM perf data), LOG_LOCATION, the working
    directory (key_file.json); config and model store are mounted read-only."""
    pod = workloads()[workload]
    container = main_container(pod)
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    env = dockerfile_env(final_stage())
    for path in ("/tmp", env["LOG_LOCATION"], env["METRICS_LOCATION"], workdir()):
        assert path in mounts, f"{workload}: nothing writable mounted at {path}"
        volume = volumes[mounts[path]["name"]]
        assert "emptyDir" in volume and volume["emptyDir"].get("sizeLimit"), path
        assert not mounts[path].get("readOnly"), path
    container_env = {e["name"]: e for e in container["env"]}
    config_path = Path(container_env["TS_CONFIG_FILE"]["value"])
    config_mount = mounts[str(config_path.parent)]
    assert config_mount["readOnly"] is True
    configmap = volumes[config_mount["name"]]["configMap"]["name"]
    assert configmap == one("ConfigMap")["metadata"]["name"]
    assert config_path.name in one("ConfigMap")["data"]
    store = container_env["TSCPU_MODEL_STORE"]["value"]
    assert mounts[store]["readOnly"] is True
    assert configmap_properties()["model_store"] == store


def test_prometheus_annotations() -> None:
    pod_annotations = one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    isvc_annotations = one("InferenceService")["metadata"]["annotations"]
    for found in (pod_annotations, isvc_annotations):
        assert found["prometheus.io/scrape"] == "true"
        assert found["prometheus.io/port"] == str(METRICS_PORT)
        assert found["prometheus.io/path"] == "/metrics"
    properties = configmap_properties()
    assert properties["metrics_mode"] == "prometheus"
    assert properties["metrics_address"] == f"http://0.0.0.0:{METRICS_PORT}"
    container = main_container(workloads()["Deployment"])
    assert port_number(container, "metrics") == METRICS_PORT


@pytest.mark.parametrize("workload", ["Deployment", "InferenceService"])
def test_workers_follow_the_pods_cpus(workload: str) -> None:
    """TS_DEFAULT_WORKERS_PER_MODEL comes from the container's own limits.cpu (downward
    API, divisor 1: a whole count) and TorchServe reads it because the config sets
    enable_envvars_config=true. The config file itself names no worker count: the
    launcher's start-up preview then counts the pod's allowed CPUs, the same number."""
    container = main_container(workloads()[workload])
    env = {e["name"]: e for e in container["env"]}
    field = env["TS_DEFAULT_WORKERS_PER_MODEL"]["valueFrom"]["resourceFieldRef"]
    assert field == {"containerName": container["name"], "resource": "limits.cpu",
                     "divisor": "1"}
    properties = configmap_properties()
    assert properties["enable_envvars_config"] == "true"
    assert "default_workers_per_model" not in properties


def test_configmap_properties() -> None:
    properties = configmap_properties()
    assert properties["cpu_launcher_enable"] == "true"
    assert properties["inference_address"] == f"http://0.0.0.0:{INFERENCE_PORT}"
    # management API only on the pod's loopback (kubectl port-forward reaches it)
    assert properties["management_address"].startswith("http://127.0.0.1:")
    assert properties["enable_model_api"] == "false"
    assert properties["load_models"] == "all"
    # the kubelet's httpGet probes cannot send TorchServe's generated token
    assert properties["disable_token_authorization"] == "true"


def test_service_hpa_and_network_policy_match_the_deployment() -> None:
    deployment = one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    container = main_container(deployment["spec"]["template"]["spec"])

    service = one("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    targets = {port_number(container, p["targetPort"]) for p in service["spec"]["ports"]}
    assert targets == {INFERENCE_PORT, METRICS_PORT}

    hpa = one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]
    }
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"

    policy = one("NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    allowed = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert allowed == {INFERENCE_PORT, METRICS_PORT}, "management (8081) stays closed"


def test_inferenceservice_structure() -> None:
    """Checked here because no schema for the KServe CRD ships with kubernetes-validate."""
    isvc = one("InferenceService")
    mode = isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
    # Serverless mode adds Knative's queue-proxy (requests != limits): Burstable pod
    assert mode == "RawDeployment"
    predictor = isvc["spec"]["predictor"]
    assert set(predictor) <= {
        "minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "containers", "volumes",
        "securityContext", "automountServiceAccountToken", "enableServiceLinks",
        "terminationGracePeriodSeconds",
    }
    # no storageUri: KServe's storage-initializer init container is Burstable
    assert "storageUri" not in json.dumps(isvc)
    assert predictor["scaleMetric"] == "cpu" and 0 < predictor["scaleTarget"] <= 100
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    container = main_container(predictor)
    assert container["name"] == "kserve-container"
    assert [p["containerPort"] for p in container["ports"]] == [INFERENCE_PORT]


def cpulist(text: str) -> list[int]:
    cpus: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus += range(int(low), int(high or low) + 1)
    return cpus


def test_kubelet_config() -> None:
    kubelet = one("KubeletConfiguration")
    assert kubelet["cpuManagerPolicy"] == "static"
    assert cpulist(str(kubelet["reservedSystemCPUs"]))
    assert kubelet["topologyManagerPolicy"] in ("single-numa-node", "restricted")
    assert kubelet["memoryManagerPolicy"] == "Static"
    reserved = sum(quantity(node["limits"]["memory"]) for node in kubelet["reservedMemory"])
    expected = (
        quantity(kubelet["kubeReserved"]["memory"])
        + quantity(kubelet["systemReserved"]["memory"])
        + quantity(kubelet["evictionHard"]["memory.available"])
    )
    assert reserved == expected, "the kubelet refuses to start otherwise"


# --- kubernetes-validate -------------------------------------------------------------


def kubernetes_validate_versions(module) -> list[str]:
    """The newest schema version and the oldest one still supported upstream (1.31+)."""
    from packaging.version import Version

    versions = [v for v in module.utils.all_versions() if Version(v) >= Version("1.31")]
    return sorted({versions[0], versions[-1]}, key=Version) if versions else []


@pytest.mark.parametrize("item", DOCUMENTS, ids=[doc_id(item) for item in DOCUMENTS])
def test_kubernetes_validate(item: tuple[Path, dict]) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate",
        reason="kubernetes-validate is not installed: pip install 'kubernetes-validate>=1.37'",
    )
    _, doc = item
    if doc["kind"] == "InferenceService":
        pytest.skip("KServe's InferenceService is a custom resource: kubernetes-validate has "
                    "no schema for it (checked by test_inferenceservice_structure)")
    if doc["kind"] == "KubeletConfiguration":
        pytest.skip("KubeletConfiguration is a kubelet config file, not an API object: "
                    "kubernetes-validate has no schema for it (checked by test_kubelet_config)")
    versions = kubernetes_validate_versions(kubernetes_validate)
    assert versions, "kubernetes-validate ships no schema for Kubernetes 1.31 or newer"
    for version in versions:
        kubernetes_validate.validate(doc, version, strict=True)


# --- checkov -------------------------------------------------------------------------


def checkov_command() -> list[str]:
    """checkov from $TSCPU_CHECKOV, this interpreter's environment, or PATH. checkov pins
    packaging<24 and networkx<2.7, which clash with pytest and torch, so it usually lives
    in its own environment (pipx, a separate venv) and is found on PATH."""
    candidates = [os.environ.get("TSCPU_CHECKOV"), str(Path(sys.executable).parent / "checkov"),
                  shutil.which("checkov")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return [candidate]
    pytest.skip("checkov is not installed: pipx install checkov (or a venv of its own; "
                "set TSCPU_CHECKOV=/path/to/checkov)")


def run_checkov(*args: str, checks: tuple[str, ...]) -> dict:
    env = {
        **os.environ,
        "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true",  # no version look-up on PyPI
        "BC_SKIP_MAPPING": "TRUE",
    }
    command = [*checkov_command(), *args, "--skip-download", "--compact", "--output", "json",
               "--check", ",".join(checks)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode in (0, 1), f"checkov failed to run:\n{result.stderr[-3000:]}"
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    merged = {"passed_checks": [], "failed_checks": []}
    for one_report in reports:
        for key in merged:
            merged[key] += one_report["results"][key]
    return merged


def assert_checks_pass(results: dict, checks: tuple[str, ...]) -> None:
    failed = [f"{c['check_id']} {c['check_name']} ({c['resource']}, {c['file_path']})"
              for c in results["failed_checks"]]
    assert not failed, "checkov:\n" + "\n".join(failed)
    reported = {c["check_id"] for c in results["passed_checks"]}
    assert set(checks) <= reported, f"checks that matched nothing: {set(checks) - reported}"


def test_checkov_kubernetes() -> None:
    results = run_checkov("--directory", "config/kubernetes", "--framework", "kubernetes",
                          checks=CHECKOV_K8S_CHECKS)
    assert_checks_pass(results, CHECKOV_K8S_CHECKS)


def test_checkov_dockerfile() -> None:
    results = run_checkov("--file", "config/container/Dockerfile", "--framework", "dockerfile",
                          checks=CHECKOV_DOCKER_CHECKS)
    assert_checks_pass(results, CHECKOV_DOCKER_CHECKS)
