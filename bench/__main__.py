"""Every benchmark in one command: speed against rclip, then vector search at scale.

    python -m bench                          # both; writes their sections of bench/RESULTS.md
    python -m bench --only speed --n 20      # options bench.speed knows are passed on to it
    python -m bench --skip vector-search

`speed` is `python -m bench.speed` (see its --help); `vector-search` is
`python -m bench.vector_search` at its default sizes (10k, 100k and 1M vectors). Each runs in its
own process, in that order.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

PARTS = {"speed": "bench.speed", "vector-search": "bench.vector_search"}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", allow_abbrev=False,
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=PARTS, help="Run just these.")
    parser.add_argument("--skip", nargs="+", choices=PARTS, default=[], help="Leave these out.")
    args, rest = parser.parse_known_args()
    chosen = [part for part in PARTS if part in (args.only or PARTS) and part not in args.skip]
    if rest and "speed" not in chosen:
        parser.error(f"{' '.join(rest)}: options for bench.speed, which is not run")
    for part in chosen:
        command = [sys.executable, "-m", PARTS[part], *(rest if part == "speed" else [])]
        print(f"== {' '.join(command[1:])}", file=sys.stderr, flush=True)
        done = subprocess.run(command)
        if done.returncode != 0:
            sys.exit(done.returncode)


if __name__ == "__main__":
    main()
