"""`python -m tests.soak [--minutes M] [--backend sqlite|postgres] [--seed N] [--out DIR]` (`make soak`).

The environment gives the defaults: SOAK_MINUTES (10), SOAK_BACKEND (sqlite), SOAK_SEED (random, printed),
SOAK_OUT (a new directory under the system temp dir), SOAK_SAMPLE_INTERVAL (10 s), SOAK_RETENTION (auto: a
short RETENTION when the consumer's --help names it; off; or a duration such as 90s). Exit 0 when the run
passed, 1 when it found anything (the report says what).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
from pathlib import Path

from tests.soak.run import Settings, main


def parse(argv: list[str]) -> Settings:
    p = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__)
    p.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", "10")))
    backend = os.environ.get("SOAK_BACKEND", "sqlite")
    p.add_argument("--backend", choices=("sqlite", "postgres"), default=backend)
    seed = os.environ.get("SOAK_SEED")
    p.add_argument("--seed", type=int, default=int(seed) if seed else random.randrange(1, 1 << 31))
    p.add_argument("--out", type=Path, default=os.environ.get("SOAK_OUT"))
    p.add_argument(
        "--sample-interval", type=float, default=float(os.environ.get("SOAK_SAMPLE_INTERVAL", "10"))
    )
    p.add_argument("--retention", default=os.environ.get("SOAK_RETENTION", "auto"))
    args = p.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix=f"eventagg-soak-{args.backend}-"))
    out.mkdir(parents=True, exist_ok=True)
    return Settings(
        args.minutes, args.backend, args.seed, out.resolve(), args.sample_interval, args.retention
    )


if __name__ == "__main__":
    sys.exit(main(parse(sys.argv[1:])))
