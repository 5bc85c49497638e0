#!/usr/bin/env bash
# Run the whole test suite: notebooks (nbdev_test), pytest (tests/), and the documentation build checked in a browser.
# Expects the package installed with its dev extras (pip install -e '.[dev]').
set -euo pipefail
cd "$(dirname "$0")/.."

# Tests read real data from ../shared/data beside the checkout unless ONG_MISGUIDE_DATA is set.
if [ -z "${ONG_MISGUIDE_DATA:-}" ] && [ -d ../shared/data ]; then
  export ONG_MISGUIDE_DATA="$(cd ../shared/data && pwd)"
fi
echo "data: ${ONG_MISGUIDE_DATA:-<none: downloads>}"
export PYTHONWARNINGS="ignore::FutureWarning"

# The page checks need Debian's chromium, so install it when running as root and it is missing.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
    || echo "could not install chromium: the page checks will be skipped"
fi

echo "== nbdev_export leaves the package unchanged"
nbdev_export
if ! git diff --quiet -- ong_misguide; then
  echo "ong_misguide/ differs from a fresh nbdev_export of nbs/:"; git diff --stat -- ong_misguide; exit 1
fi

echo "== notebooks (nbdev_test, slow cells skipped)"
nbdev_test --n_workers 1 --timing

echo "== pytest"
python -m pytest tests -q -p no:cacheprovider
