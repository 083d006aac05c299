"""Write the synthetic demo dataset (upstream format, real image files) to a folder.

    python tools/make_demo_data.py out/demo --num-train 64 --num-test 16 --seed 0

A thin CLI over ``mcmdpo.method.data.demo.make_demo_dataset`` (the ``data`` stage with ``source = "demo"``
calls the same function); tools/ is never imported by the package.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mcmdpo.method.data.demo import make_demo_dataset


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path, help="folder to write train.json, test.jsonl and images/ into")
    parser.add_argument("--num-train", type=int, default=64)
    parser.add_argument("--num-test", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-size", type=int, default=256, help="smallest image side (pixels)")
    parser.add_argument("--max-size", type=int, default=512, help="largest image side (pixels)")
    args = parser.parse_args()
    summary = make_demo_dataset(
        args.out, args.num_train, args.num_test, args.seed, args.min_size, args.max_size
    )
    print(json.dumps({"out": str(args.out), **summary}))


if __name__ == "__main__":
    main()
