#!/usr/bin/env bash
# Build the mflow image on a locally made Debian base with podman, then train/sample/encode a tiny recipe
# inside it. For machines that cannot pull base images (needs root, podman, buildah, runc, debootstrap):
#   apt-get install -y podman buildah runc debootstrap
#   docker/build_and_test.sh            # ~10-20 min on 2 cores (pip + compiling the C++ kernels)
# Environment: IMAGE (default localhost/mflow:debian-test), BASE (default localhost/debian-local:bookworm),
#              ENGINE (default podman), KEEP_WORK=1 to keep the scratch folder,
#              SKIP_BUILD=1 to test an image built before, CONTEXT=DIR to build another tree
#              (e.g. a `git archive HEAD` export, to leave uncommitted edits out).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
engine="${ENGINE:-podman}"
image="${IMAGE:-localhost/mflow:debian-test}"
base="${BASE:-localhost/debian-local:bookworm}"
# Explicit, lowered rlimits: in this sandbox runc may not raise RLIMIT_NOFILE/NPROC to podman's defaults.
run_opts=(--rm --runtime runc --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 --network none)

if ! "$engine" image exists "$base" 2>/dev/null; then
  echo "== making the base image $base with debootstrap"
  rootfs="$(mktemp -d)"
  debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian
  tar -C "$rootfs" -c . | "$engine" import - "${base#localhost/}"
  rm -rf "$rootfs"
fi

# Pass this machine's pip setup (local wheel folders and file:// indexes) into the build: the folders are
# bind-mounted read-only at the same paths and the settings go in as build args.
pip_setting() {  # the environment (PIP_X) wins over pip's config files, as in pip itself
  local env="PIP_${1//-/_}"; env="${env^^}"
  if [[ -n "${!env:-}" ]]; then echo "${!env}"; else pip config get "global.$1" 2>/dev/null || true; fi
}
find_links="$(pip_setting find-links)"
extra_index="$(pip_setting extra-index-url)"
build_opts=(--network host --build-arg "BASE_IMAGE=$base" --build-arg MAX_JOBS=2
            --build-arg "PIP_FIND_LINKS=$find_links" --build-arg "PIP_EXTRA_INDEX_URL=$extra_index")
cert="$(pip_setting cert)"
if [[ -n "$cert" && -f "$cert" ]]; then  # a TLS-intercepting proxy's CA bundle, if pip here uses one
  build_opts+=(-v "$cert:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
fi
for dir in $find_links $extra_index; do
  dir="${dir#file://}"
  dir="${dir%/simple}"
  [[ -d "$dir" ]] && build_opts+=(-v "$dir:$dir:ro")
done

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  echo "== building $image on $base"
  # --format docker: the OCI format would drop the Dockerfile's SHELL (bash -o pipefail).
  "$engine" build --format docker "${build_opts[@]}" --ignorefile "$here/Dockerfile.dockerignore" \
    -f "$here/Dockerfile" -t "$image" "${CONTEXT:-$repo}"
fi
"$engine" image exists "$image" || { echo "FAIL: no image $image"; exit 1; }

work="$(mktemp -d)"
[[ "${KEEP_WORK:-0}" == 1 ]] || trap 'rm -rf "$work"' EXIT
cat > "$work/tiny.yaml" <<'YAML'
name: tiny
seed: 3
data: {name: thin_spiral, n_train: 400, n_test: 100}
model: {kind: dnf, outer_layers: 2, hidden_features: 16, num_blocks: 1}
train: {epochs: 2, batch_size: 100}
YAML

run() { "$engine" run "${run_opts[@]}" -v "$work:/work" "$image" "$@"; }
echo "== mflow --version";  run --version
echo "== mflow train";      run train /work/tiny.yaml --out /work/run
echo "== mflow sample";     run sample /work/run -n 500 -o /work/samples.h5
echo "== mflow encode";     run encode /work/run /work/samples.h5 -o /work/latents.h5
echo "== refuses to overwrite without --force (expect exit 2)"
if run sample /work/run -n 5 -o /work/samples.h5; then echo "FAIL: overwrote"; exit 1; fi
echo "== docker stop (SIGTERM, through tini) during training: checkpoint saved, exit 130; --resume finishes"
name="mflow-sigterm-$$"
"$engine" run -d --name "$name" "${run_opts[@]:1}" -v "$work:/work" "$image" \
  train /work/tiny.yaml --out /work/long --set train.epochs=300 >/dev/null
for _ in $(seq 600); do [[ -f "$work/long/checkpoint.pt" ]] && break; sleep 0.1; done
"$engine" stop -t 60 "$name" >/dev/null
code="$("$engine" wait "$name")"
"$engine" logs "$name" 2>&1 | tr '\r' '\n' | grep -E "error|saved" || true
"$engine" rm "$name" >/dev/null
echo "exit code after docker stop: $code"
[[ "$code" == 130 ]] || { echo "FAIL: expected 130"; exit 1; }
run train /work/tiny.yaml --out /work/long --set train.epochs=300 --resume
ls -l "$work" "$work/run"
echo "== OK: image $image trains, samples and encodes"
