"""The seven-VM layout as data: the one description every deployment artefact is made from.

`make up` (services/cli/stack.py) runs every service on one machine; the seven-host
deployment puts each VM role on its own VM template. Bundles (which extras a role installs),
systemd units and cloud-init (which services a VM runs, with which limits), Kubernetes
manifests and compose (replicas, probes, resources, which arrows the network allows), the
Prometheus targets and the multi-host tests all read this module, so they cannot drift apart.

Ports are the same on every host of a role (one service per port, as `make up` numbers them);
a host is told its peers' addresses by the inventory (`infra/inventory.example.yaml`).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Service:
    """One long-running platform process of a VM role."""

    name: str                 # service name: certificate role, systemd unit `doctag-<name>`, metrics job
    module: str               # `python -m <module>` starts it
    http_port: int            # /healthz, /readyz, /metrics (and the API, for HTTP services)
    grpc_port: int | None     # gRPC server (health service included), if it has one
    memory_max_mib: int       # systemd MemoryMax= and the Kubernetes memory limit
    memory_request_mib: int   # Kubernetes memory request (measured idle RSS with headroom)
    cpu_request_milli: int    # Kubernetes CPU request
    status_port: int | None = None  # a separate status listener (the gateway's Kong-style Status API)
    # What it writes besides /tmp: "blobs" (the blob store, shared by the web hosts), "state" (the
    # host's state dir: model store, ONNX cache). systemd ReadWritePaths= lists only these.
    writes: tuple[str, ...] = ()
    # Scheduling priority against the other services of its host: systemd CPUWeight= (100 = the
    # default share; lower = less CPU under contention) and Nice=; Kubernetes gets its lower CPU request.
    cpu_weight: int = 100
    nice: int = 0


@dataclass(frozen=True)
class VmRole:
    """A VM template: how many VMs, their size, and what runs on them."""

    name: str                        # `make deploy-<name>`; bundle `doctag-<version>-<name>.tar.gz`
    count: int                       # VMs of this role in the seven-VM layout
    vcpus: int                       # VM template size
    memory_gib: int
    extras: tuple[str, ...]          # pyproject extras the role's bundle installs (empty: no Python)
    services: tuple[Service, ...]
    needs_torch: bool = False        # the CPU torch wheel travels only in bundles that need it


GATEWAY = Service("gateway", "gateway", http_port=8080, grpc_port=None, memory_max_mib=1024,
                  memory_request_mib=256, cpu_request_milli=1000, status_port=8100)
UPLOAD = Service("upload", "services.upload", http_port=8101, grpc_port=9101, memory_max_mib=2560,
                 memory_request_mib=1280, cpu_request_milli=500, writes=("blobs",))
# Search saves the ANN indexes of large tenants in its state dir (services/search/ann_store.py).
SEARCH = Service("search", "services.search", http_port=8111, grpc_port=9111, memory_max_mib=2048,
                 memory_request_mib=1024, cpu_request_milli=500, writes=("state",))
WEB = Service("web", "services.web", http_port=8141, grpc_port=None, memory_max_mib=512,
              memory_request_mib=128, cpu_request_milli=200)
MODEL_SERVING = Service("model-serving", "services.model_serving", http_port=8121, grpc_port=9121,
                        memory_max_mib=6144, memory_request_mib=3072, cpu_request_milli=3000,
                        writes=("state",))
# Training runs next to model-serving at a lower priority: inference always comes first. It writes
# finished artifacts into the model store (state) for model-serving to register.
TRAINING_WORKER = Service("training-worker", "services.training_worker", http_port=8151, grpc_port=None,
                          memory_max_mib=6144, memory_request_mib=2048, cpu_request_milli=500, writes=("state",),
                          cpu_weight=20, nice=10)
TAGGING_WORKER = Service("tagging-worker", "services.tagging_worker", http_port=8131, grpc_port=None,
                         memory_max_mib=2048, memory_request_mib=512, cpu_request_milli=1000)

# The db role runs distribution packages, not platform code: their ports, for firewalls and probes.
POSTGRES_PORT = 5432
RABBITMQ_PORT = 5672
REDIS_PORT = 6379

ROLES: tuple[VmRole, ...] = (
    VmRole("db", 1, vcpus=4, memory_gib=16, extras=("ops",), services=()),
    VmRole("model", 1, vcpus=8, memory_gib=16, extras=("model", "train", "ops"),
           services=(MODEL_SERVING, TRAINING_WORKER), needs_torch=True),
    VmRole("gateway", 1, vcpus=2, memory_gib=4, extras=("gateway", "ops"), services=(GATEWAY,)),
    VmRole("web", 2, vcpus=4, memory_gib=8, extras=("web", "ops"), services=(UPLOAD, SEARCH, WEB)),
    VmRole("tagging", 2, vcpus=4, memory_gib=8, extras=("tagging",), services=(TAGGING_WORKER,)),
)
"""In dependency order: deploy-all installs them in this order and waits for each to be ready. db
first; the gateway before web, because the web UI is ready only once it reaches the gateway (the
gateway's own readiness needs just its database; its health checks admit the web hosts as they
come); tagging last, since its workers need upload (web) and model-serving."""

# Who opens connections to whom (the architecture's arrows): NetworkPolicies, pg_hba.conf and the
# multi-host tests' attacker checks are made from it. (client service, server service or db port name)
ARROWS: tuple[tuple[str, str], ...] = (
    ("gateway", "upload"), ("gateway", "search"), ("gateway", "web"), ("gateway", "model-serving"),
    ("gateway", "postgres"), ("gateway", "redis"),
    ("web", "gateway"),  # the UI's server side calls the public API through the gateway
    ("upload", "postgres"), ("upload", "rabbitmq"),
    ("search", "postgres"), ("search", "model-serving"),
    ("tagging-worker", "rabbitmq"), ("tagging-worker", "upload"), ("tagging-worker", "model-serving"),
    ("model-serving", "postgres"), ("model-serving", "rabbitmq"),
    ("training-worker", "postgres"), ("training-worker", "rabbitmq"),
)

# The settings that tell a service where a peer of one of its arrows is: (client service, setting,
# server service, "grpc" or "http"). Deploy's env files, compose.yaml and the Kubernetes manifests
# fill them with the addresses they know; the gateway's upstreams are in its kong.yml instead.
PEER_SETTINGS: tuple[tuple[str, str, str, str], ...] = (
    ("search", "DOCTAG_MODEL_GRPC_TARGET", "model-serving", "grpc"),
    ("tagging-worker", "DOCTAG_DOCUMENTS_GRPC_TARGET", "upload", "grpc"),
    ("tagging-worker", "DOCTAG_MODEL_GRPC_TARGET", "model-serving", "grpc"),
    ("web", "DOCTAG_WEB_API_URL", "gateway", "http"),
)


def port_settings(svc: Service) -> dict[str, str]:
    """The DOCTAG_* port settings that make a service listen where this layout says."""
    env = {"DOCTAG_HTTP_PORT": str(svc.http_port)}
    if svc.grpc_port is not None:
        env["DOCTAG_GRPC_PORT"] = str(svc.grpc_port)
    if svc.status_port is not None:
        env["DOCTAG_GATEWAY_STATUS_PORT"] = str(svc.status_port)
    return env


def role(name: str) -> VmRole:
    """The VM role called `name`; KeyError names the known ones."""
    for r in ROLES:
        if r.name == name:
            return r
    raise KeyError(f"unknown VM role {name!r}; known: {', '.join(r.name for r in ROLES)}")


def service(name: str) -> Service:
    for r in ROLES:
        for s in r.services:
            if s.name == name:
                return s
    raise KeyError(f"unknown service {name!r}")


def role_of_service(name: str) -> VmRole:
    for r in ROLES:
        if any(s.name == name for s in r.services):
            return r
    raise KeyError(f"unknown service {name!r}")


def total_vms() -> int:
    return sum(r.count for r in ROLES)
