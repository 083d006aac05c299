"""Benchmark: time to score 1,700 alt-text predictions with both protocols (paper + coco).

1,700 predictions (the size of the PAlt/TAlt test sets) are built from the upstream sample records
(``/work/shared/data/altext-samples`` when present, else built-in sentences) with perturbed
responses. Measured side by side:

- ``mcmdpo``: ``mcmdpo.evaluation.metrics.altext.score_file(..., ["paper", "coco"])`` in a fresh Python
  process,
  wall time including interpreter and library imports, WordNet loading and the Java start-ups (PTB
  tokenizer, METEOR 1.5); the Java tools run while the paper metrics are computed;
- ``pycocoevalcap``: the coco protocol alone through pycocoevalcap's own classes as
  ``COCOEvalCap`` drives them (two tokenizer runs, one METEOR round trip per item), in-process.

The paper protocol needs WordNet: ``--nltk-data DIR`` (or NLTK's search path); without it the script
builds one from Debian's ``/usr/share/wordnet`` (``mcmdpo.evaluation.assets.install_wordnet``). Without NLTK's
punkt data the ``treebank`` tokenizer is used (printed). The last line is one JSON object.

Run: ``python bench/score.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAMPLES = Path("/work/shared/data/altext-samples")
FALLBACK = [
    "a graphic with suggested hashtags for instagram posts for every day of the week.",
    "christian poetry. a woman hanging clothes on a line.",
    "two people hike up a snowy mountain trail at sunrise.",
    "a red bus parked next to a green tree on a sunny street.",
]
TARGET_S = 30.0


def references() -> list[str]:
    texts = []
    for path in sorted(SAMPLES.glob("*/*_test.json")):
        texts += [json.loads(line)["chosen"] for line in path.read_text().splitlines() if line.strip()]
    return texts or FALLBACK


def build_predictions(path: Path, n: int) -> None:
    rng = random.Random(0)
    refs = references()
    vocab = sorted({w for t in refs for w in t.split()})
    lines = []
    for i in range(n):
        ref = refs[i % len(refs)]
        words = ref.split()
        cut = words[: max(1, len(words) - rng.randint(0, 3))]
        extra = [rng.choice(vocab) for _ in range(rng.randint(0, 8))]
        response = " ".join(cut + extra)
        if i % 10 == 0:
            response = "Assistant: " + response
        lines.append(json.dumps({"idx": i, "chosen": ref, "response": response}))
    path.write_text("\n".join(lines) + "\n")


def nltk_setup(given: str | None, tmp: Path) -> tuple[str, str]:
    """(NLTK data dir with WordNet, tokenizer mode)."""
    from mcmdpo.evaluation.assets import install_wordnet
    from mcmdpo.evaluation.metrics import nlp

    data = given
    if data is None:
        if nlp.find_resource(nlp.WORDNET) is None:
            install_wordnet("/usr/share/wordnet", tmp / "nltk")
            data = str(tmp / "nltk")
        else:
            data = ""
    if data:
        nlp.use_data_dirs([data])
    tokenizer = "punkt" if nlp.find_resource(nlp.PUNKT) else "treebank"
    return data, tokenizer


def run_ours(pred: Path, out: Path, data: str, tokenizer: str) -> float:
    code = (
        "from mcmdpo.evaluation.metrics import altext, nlp; "
        f"altext.score_file({str(pred)!r}, ['paper', 'coco'], {str(out)!r}, "
        f"nlp.NltkSpec(tokenizer={tokenizer!r}, data_dirs=({data!r},) if {data!r} else ()))"
    )
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - started


def run_pycocoevalcap(pred: Path) -> tuple[float, dict[str, float]]:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    from mcmdpo.evaluation.metrics.altext import strip_assistant

    records = [json.loads(line) for line in pred.read_text().splitlines()]
    started = time.perf_counter()
    gts = {i: [{"caption": r["chosen"]}] for i, r in enumerate(records)}
    res = {i: [{"caption": strip_assistant(r["response"])}] for i, r in enumerate(records)}
    tokenizer = PTBTokenizer()
    gts, res = tokenizer.tokenize(gts), tokenizer.tokenize(res)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    meteor, _ = Meteor().compute_score(gts, res)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    seconds = time.perf_counter() - started
    return seconds, {
        "bleu_4": bleu[3] * 100,
        "meteor": meteor * 100,
        "rouge_l": rouge * 100,
        "cider": cider * 100,
    }


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1700)
    parser.add_argument("--nltk-data", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        pred, out = tmp / "pred.jsonl", tmp / "metrics.json"
        build_predictions(pred, args.n)
        data, tokenizer = nltk_setup(args.nltk_data, tmp)
        ours_s = run_ours(pred, out, data, tokenizer)
        doc = json.loads(out.read_text())
        coco_s, direct = run_pycocoevalcap(pred)
    coco = doc["metrics"]["coco"]
    same = all(abs(coco[k] - v) < 1e-9 for k, v in direct.items())
    print(f"{args.n} predictions, tokenizer {tokenizer} (paper protocol)")
    print(f"mcmdpo score_file paper + coco, fresh process: {ours_s:.1f} s (target <= {TARGET_S:.0f} s)")
    print(f"pycocoevalcap coco protocol alone, in-process: {coco_s:.1f} s; same coco numbers: {same}")
    result = {
        "predictions": args.n,
        "tokenizer": tokenizer,
        "seconds_both_protocols": round(ours_s, 2),
        "seconds_pycocoevalcap_coco_only": round(coco_s, 2),
        "ratio_vs_pycocoevalcap_coco_only": round(ours_s / coco_s, 3),
        "coco_matches_pycocoevalcap": same,
        "paper": {k: doc["metrics"]["paper"][k] for k in ("bleu_4", "meteor", "rouge_l", "cider")},
        "target_s": TARGET_S,
        "within_target": ours_s <= TARGET_S,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
