"""The torchserve-cpu image under a real container engine, for tests/e2e/test_container.py.

Everything goes through `scripts/container.sh` (the engine it picks, with its settings),
so the tests run the image as a user of the script would. Containers publish their ports
on 127.0.0.1 only, on host ports the engine picks.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "container.sh"
HEALTHCHECK = "/usr/local/lib/torchserve-cpu/healthcheck.py"
WORKDIR = "/home/model-server/work"

# Run inside the container: every TorchServe worker's pid and Cpus_allowed_list from /proc,
# and the container's own cgroup limits (cgroup v1 or v2).
INSIDE_PROBE = r"""
import json, os
from pathlib import Path
workers = {}
for entry in Path("/proc").iterdir():
    if not entry.name.isdigit():
        continue
    try:
        cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        status = (entry / "status").read_text()
    except OSError:
        continue
    if not any(part.endswith(b"model_service_worker.py") for part in cmdline):
        continue
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    workers[entry.name] = fields["Cpus_allowed_list"].strip()
def read(*names):
    for name in names:
        try:
            return Path(name).read_text().strip()
        except OSError:
            pass
    return None
CG = "/sys/fs/cgroup/"
cgroup = {"cpuset": read(CG + "cpuset/cpuset.cpus", CG + "cpuset.cpus.effective"),
          "quota": read(CG + "cpu/cpu.cfs_quota_us", CG + "cpu,cpuacct/cpu.cfs_quota_us",
                        CG + "cpu.max"),
          "period": read(CG + "cpu/cpu.cfs_period_us", CG + "cpu,cpuacct/cpu.cfs_period_us"),
          "memory": read(CG + "memory/memory.limit_in_bytes", CG + "memory.max")}
affinity = sorted(os.sched_getaffinity(0))
print(json.dumps({"workers": workers, "cgroup": cgroup, "affinity": affinity}))
"""


MANAGEMENT_GET = (
    "import sys, urllib.request as u\n"
    "request = u.Request(sys.argv[1])\n"
    "if sys.argv[2]: request.add_header('Authorization', 'Bearer ' + sys.argv[2])\n"
    "print(u.urlopen(request, timeout=10).read().decode())\n"
)


def pod_run_args(deployment: dict, configmap: dict, folder: Path, store: Path,
                 cpus: int, memory: str) -> list[str]:
    """The Deployment's container as engine run flags, as the kubelet would start it with
    `cpus` CPUs and `memory` (the manifest's own sizes do not fit a 2-CPU machine): its
    env (limits.cpu through the downward API), the ConfigMap mounted read-only, the model
    store at its mount, every emptyDir a tmpfs, and its security context (read-only root,
    user, no capabilities, no privilege escalation)."""
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    context = container["securityContext"]
    args = [f"--cpus={cpus}", f"--memory={memory}",
            "--user", f"{context['runAsUser']}:{context['runAsGroup']}"]
    if context.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    if "ALL" in context.get("capabilities", {}).get("drop", []):
        args.append("--cap-drop=ALL")
    if context.get("allowPrivilegeEscalation") is False:
        args.append("--security-opt=no-new-privileges")
    for entry in container.get("env", []):
        if "value" in entry:
            value = entry["value"]
        else:
            field = entry["valueFrom"]["resourceFieldRef"]
            assert field["resource"] == "limits.cpu" and str(field["divisor"]) == "1", field
            value = str(cpus)
        args += ["-e", f"{entry['name']}={value}"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            assert volume["configMap"]["name"] == configmap["metadata"]["name"]
            files = folder / mount["name"]
            files.mkdir(mode=0o755)
            for name, text in configmap["data"].items():
                (files / name).write_text(text)
                (files / name).chmod(0o644)
            args += ["-v", f"{files}:{mount['mountPath']}:ro"]
        elif "persistentVolumeClaim" in volume:
            args += ["-v", f"{store}:{mount['mountPath']}:ro"]
        else:
            size = str(volume["emptyDir"]["sizeLimit"]).replace("Gi", "g").replace("Mi", "m")
            args += ["--tmpfs", f"{mount['mountPath']}:rw,size={size},mode=1777"]
    return args


def script(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                            timeout=timeout, cwd=REPO)
    if check and result.returncode != 0:
        raise AssertionError(f"scripts/container.sh {' '.join(args)}: exit "
                             f"{result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return result


def engine(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    return script("engine", *args, timeout=timeout, check=check)


def engine_unusable() -> str | None:
    """Why no container can run here (the reason a skip names), or None."""
    probe = subprocess.run(["bash", str(SCRIPT), "probe"], capture_output=True,
                           text=True, timeout=120, cwd=REPO)
    if probe.returncode != 0:
        lines = (probe.stderr.strip() or probe.stdout.strip()).splitlines() or ["(no output)"]
        return f"no container can run here: `scripts/container.sh probe`: {lines[-1]}"
    return None


def parse_cpulist(text: str) -> set[int]:
    cpus: set[int] = set()
    for part in text.replace(" ", ",").split(","):
        if part:
            low, _, high = part.partition("-")
            cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def archive_following_the_container(source: Path, target: Path) -> Path:
    """`source` (a .mar) with minWorkers/maxWorkers taken out of its model-config.yaml: its
    worker count is then TorchServe's default, one per CPU the container may use (the
    JVM counts the cpuset and the CFS quota), as a model store of the user's would be."""
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w") as out:
        for item in archive.infolist():
            data = archive.read(item)
            if item.filename == "model-config.yaml":
                lines = data.decode().splitlines(keepends=True)
                data = "".join(line for line in lines
                               if not line.startswith(("minWorkers:", "maxWorkers:"))).encode()
            out.writestr(item, data)
    return target


@dataclass
class Reply:
    status: int
    body: bytes


def call(url: str, body: bytes | None = None, key: str | None = None,
         content_type: str = "application/octet-stream", timeout: float = 60) -> Reply:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    if body is not None:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return Reply(reply.status, reply.read())
    except urllib.error.HTTPError as error:
        return Reply(error.code, error.read())


@dataclass
class Container:
    """One running container of the image, named `name`."""

    name: str
    ports: dict[int, int] = field(default_factory=dict)  # container port -> host port

    @classmethod
    def start(cls, image: str, name: str, *run_args: str) -> Container:
        engine("rm", "--force", "--ignore", name, check=False)
        ports = ["-p", "127.0.0.1::8080", "-p", "127.0.0.1::8081", "-p", "127.0.0.1::8082"]
        engine("run", "--detach", "--name", name, *ports, *run_args, image)
        container = cls(name)
        for port in (8080, 8081, 8082):
            mapped = engine("port", name, str(port)).stdout.strip().splitlines()[0]
            container.ports[port] = int(mapped.rsplit(":", 1)[1])
        return container

    def url(self, port: int) -> str:
        return f"http://127.0.0.1:{self.ports[port]}"

    def exec(self, *command: str, timeout: float = 60, check: bool = True
             ) -> subprocess.CompletedProcess:
        return engine("exec", self.name, *command, timeout=timeout, check=check)

    def running(self) -> bool:
        state = engine("inspect", "--format", "{{.State.Running}}", self.name, check=False)
        return state.stdout.strip() == "true"

    def exit_code(self) -> int:
        return int(engine("inspect", "--format", "{{.State.ExitCode}}", self.name).stdout)

    def logs(self, tail: int = 60) -> str:
        result = engine("logs", "--tail", str(tail), self.name, check=False)
        return result.stdout + result.stderr

    def keys(self) -> dict:
        """key_file.json, as the README says to read it; {} without one (token
        authorization off)."""
        result = self.exec("cat", f"{WORKDIR}/key_file.json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else {}

    def management(self, path: str) -> object:
        """GET the management API from inside (a pod's config keeps it on loopback)."""
        key = self.keys().get("management", {}).get("key", "")
        return json.loads(self.exec("python", "-c", MANAGEMENT_GET,
                                    f"http://127.0.0.1:8081{path}", key).stdout)

    def inside(self) -> dict:
        return json.loads(self.exec("python", "-c", INSIDE_PROBE).stdout)

    def probe(self, *args: str) -> bool:
        """The health check as the kubelet's exec probe (or the engine's HEALTHCHECK) runs it."""
        return self.exec("python", HEALTHCHECK, *args, timeout=30, check=False).returncode == 0

    def remove(self) -> None:
        engine("rm", "--force", "--ignore", "--time", "0", self.name, check=False, timeout=120)


def wait_until(condition, timeout: float, step: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"{what}: not met in {timeout:.0f} s")
