#!/usr/bin/env bash
# Compile <dir>/tables_standalone.tex (which \inputs tables.tex) with pdflatex in a temporary
# directory. Exit non-zero if pdflatex is missing, a file is missing, or compilation fails;
# on failure the end of the log is printed. Usage: compile_latex.sh <dir> [out.pdf]
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
    echo "usage: $0 <dir with tables_standalone.tex and tables.tex> [out.pdf]" >&2
    exit 2
fi
src_dir=$1
out_pdf=${2:-}
command -v pdflatex >/dev/null || {
    echo "FAIL: pdflatex not found (apt-get install -y --no-install-recommends texlive-latex-recommended texlive-latex-base)" >&2
    exit 2
}
for name in tables_standalone.tex tables.tex; do
    [[ -f "$src_dir/$name" ]] || { echo "FAIL: $src_dir/$name not found" >&2; exit 2; }
done

work=$(mktemp -d)
trap 'rm -rf -- "$work"' EXIT
cp -- "$src_dir/tables_standalone.tex" "$src_dir/tables.tex" "$work/"
if ! (cd "$work" && pdflatex -interaction=nonstopmode -halt-on-error -no-shell-escape \
        tables_standalone.tex >/dev/null 2>&1); then
    echo "FAIL: pdflatex could not compile $src_dir/tables_standalone.tex; end of log:" >&2
    tail -n 25 "$work/tables_standalone.log" >&2 || true
    exit 1
fi
if [[ ! -s "$work/tables_standalone.pdf" ]]; then
    echo "FAIL: pdflatex wrote no PDF for $src_dir/tables_standalone.tex (no tables?)" >&2
    exit 1
fi
if [[ -n "$out_pdf" ]]; then
    cp -- "$work/tables_standalone.pdf" "$out_pdf"
fi
pages=$(sed -n 's/^Output written on .* (\([0-9]*\) pages\?,.*/\1/p' "$work/tables_standalone.log")
echo "OK $src_dir/tables_standalone.tex compiled (${pages} page(s))"
