#!/usr/bin/env bash
# Builds (and optionally pushes) the pipeline image from kubeflow/Dockerfile.
#
#   kubeflow/build_image.sh IMAGE            docker build
#   kubeflow/build_image.sh IMAGE --push     docker build + docker push
#   kubeflow/build_image.sh IMAGE --cloud    Cloud Build (gcloud builds submit): no local Docker
#   kubeflow/build_image.sh --stage DIR      only write the build context to DIR (tests use it)
#
# The context is staged rather than the repo root: the image needs the package sources,
# not .venv/ (GBs), build/, data/ or pushed models.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

# What the image is built from; tests/test_kubeflow.py installs exactly this.
stage() {
  local dir="$1"
  mkdir -p "$dir/kubeflow" "$dir/requirements"
  cp "$ROOT/kubeflow/Dockerfile" "$dir/Dockerfile"
  cp "$ROOT/setup.py" "$ROOT/module_file.py" "$dir/"
  if [[ -f "$ROOT/pyproject.toml" ]]; then cp "$ROOT/pyproject.toml" "$dir/"; fi
  cp "$ROOT/kubeflow/check_image.py" "$ROOT/kubeflow/kubeflow_v2_runner.py" "$dir/kubeflow/"
  cp "$ROOT/requirements/tfx-1.16-py311.lock" "$dir/requirements/"
  # Python packages that setup.py installs; sources only, no caches.
  (cd "$ROOT" && find music_rnn components pipeline serving -name '*.py' -not -path '*/__pycache__/*' \
     -exec cp --parents {} "$dir/" \;)
}

if [[ "${1:-}" == "--stage" ]]; then
  [[ -n "${2:-}" ]] || { echo "usage: $0 --stage DIR" >&2; exit 2; }
  stage "$2"
  exit 0
fi

IMAGE="${1:?usage: $0 IMAGE [--push|--cloud] (e.g. REGION-docker.pkg.dev/PROJECT/REPO/music-rnn-tfx:TAG)}"
MODE="${2:-}"
CONTEXT="$(mktemp -d)"
trap 'rm -rf "$CONTEXT"' EXIT
stage "$CONTEXT"

case "$MODE" in
  --cloud)
    gcloud builds submit --tag "$IMAGE" "$CONTEXT"
    ;;
  ""|--push)
    docker build -t "$IMAGE" "$CONTEXT"
    if [[ "$MODE" == "--push" ]]; then docker push "$IMAGE"; fi
    ;;
  *)
    echo "unknown option $MODE (expected --push or --cloud)" >&2; exit 2
    ;;
esac
echo "Built $IMAGE"
