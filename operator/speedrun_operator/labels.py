"""Label, annotation and name conventions of everything the operator creates.

One place for the keys, so builders, handlers, tests and the harness agree. Children are found
by `LABEL_JOB` (the owning SpeedrunJob's name) plus `LABEL_ROLE`; ownership itself is the
ownerReference, which is what garbage collection follows.
"""

from __future__ import annotations

from speedrun_api.run_contract import RUN_CONFIG_FILE
from speedrun_api.spec import API_GROUP, RENDEZVOUS_PORT

MANAGER = "speedrun-operator"

# Kubernetes recommended labels (https://kubernetes.io/docs/concepts/overview/working-with-objects/common-labels/).
LABEL_APP_NAME = "app.kubernetes.io/name"
LABEL_APP_INSTANCE = "app.kubernetes.io/instance"
LABEL_APP_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
APP_NAME = "speedrun"

# Our own: which SpeedrunJob a child belongs to, and what it does for it.
LABEL_JOB = f"{API_GROUP}/job"
LABEL_ROLE = f"{API_GROUP}/role"
LABEL_ATTEMPT = f"{API_GROUP}/attempt"  # the training Job's attempt: 0, then one more per gang restart
ROLE_TRAIN = "train"
ROLE_EVAL = "eval"
ROLE_CONFIG = "config"
ROLE_RENDEZVOUS = "rendezvous"

# Set by Kubernetes on the pods of Indexed Jobs (label since 1.28, annotation before).
LABEL_COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
# Kueue admits (unsuspends) Jobs that carry this label.
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
# GKE TPU slice topology, next to the accelerator selector from the accelerator table.
LABEL_GKE_TPU_TOPOLOGY = "cloud.google.com/gke-tpu-topology"

# kopf keeps its handler progress and last-handled spec in annotations with this prefix, so the
# status stays exactly what the CRD schema describes.
KOPF_ANNOTATION_PREFIX = API_GROUP

# Container, volume and port names inside the pods.
CONTAINER_TRAINER = "trainer"
CONTAINER_EVALUATOR = "evaluator"
PORT_RENDEZVOUS = RENDEZVOUS_PORT
PORT_NAME_RENDEZVOUS = "rdzv"
PORT_NAME_METRICS = "metrics"
CONFIG_KEY = RUN_CONFIG_FILE
CONFIG_DIR = "/etc/speedrun"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_KEY}"


def configmap_name(job_name: str) -> str:
    return f"{job_name}-run"


def service_name(job_name: str) -> str:
    """The headless Service; pods of `<name>-train` get DNS names `<name>-train-<i>.<name>`."""
    return job_name


def train_job_name(job_name: str) -> str:
    return f"{job_name}-train"


def eval_job_name(job_name: str) -> str:
    return f"{job_name}-eval"


def rendezvous_endpoint(job_name: str) -> str:
    """Rank 0's stable DNS name: Indexed Job pod hostname `<job>-0` under the headless Service."""
    return f"{train_job_name(job_name)}-0.{service_name(job_name)}:{PORT_RENDEZVOUS}"


def child_labels(job_name: str, role: str) -> dict[str, str]:
    """Labels every child carries; `LABEL_JOB` + `LABEL_ROLE` select it."""
    return {
        LABEL_APP_NAME: APP_NAME,
        LABEL_APP_INSTANCE: job_name,
        LABEL_APP_COMPONENT: role,
        LABEL_MANAGED_BY: MANAGER,
        LABEL_JOB: job_name,
        LABEL_ROLE: role,
    }


def selector_labels(job_name: str, role: str) -> dict[str, str]:
    """The stable subset used in selectors (Service -> training pods)."""
    return {LABEL_JOB: job_name, LABEL_ROLE: role}
