#!/usr/bin/env bash
# Debian packages the tests use: pdflatex + booktabs (LaTeX tables compile check) and headless
# Chromium (HTML report render check). Installs only what is missing; needs root. Run by .ci/run
# and by `make test SYSTEM_DEPS=1`; without them those tests skip and say why.
set -euo pipefail
need=()
command -v pdflatex >/dev/null || need+=(texlive-latex-base texlive-latex-recommended)
command -v chromium >/dev/null || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "missing system packages: ${need[*]} (run as root, or the related tests will skip)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
