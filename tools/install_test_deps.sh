#!/usr/bin/env bash
# System packages the tests use besides SLURM (slurm/dev-cluster/start.sh installs that): WordNet for the
# NLTK-based metrics, built into an NLTK data folder by the tests, Java for pycocoevalcap, pdflatex
# with booktabs (texlive-latex-recommended) to compile the report's table.tex, and headless Chromium with
# its chromedriver for the browser tests of the HTML report and the annotation pages (tests/test_browser.py;
# the selenium driver comes with the dev extra).
# Needs root and Debian's apt; does nothing when everything is present.
set -euo pipefail
need=()
[ -f /usr/share/wordnet/data.noun ] || need+=(wordnet-base)
[ -f /usr/share/wordnet/index.sense ] || need+=(wordnet-sense-index)
command -v java >/dev/null || need+=(default-jre-headless)
command -v pdflatex >/dev/null || need+=(texlive-latex-base)
{ command -v kpsewhich >/dev/null && kpsewhich booktabs.sty >/dev/null; } || need+=(texlive-latex-recommended)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
