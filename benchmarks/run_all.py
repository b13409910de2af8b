"""``make bench``: every benchmark, one after the other, results saved as JSON.

Targets (they live here, never in unit tests):
- plan: validate + plan of 100,000 shots <= 1.5x PyYAML's C loader alone; peak < 1 GB
- run: makespan / ideal (2,000 shots, [1, 2] s): polling only <= 1.08 and <= 5 fetch
  calls per shot; callbacks <= 1.02 and <= 1.5; callbacks with 20% lost <= 1.05;
  >= 200 shots/s and <= 3 ms runner CPU per shot (5,000 shots, zero render time)
- scale: 100,000-shot batch peak RSS < 500 MB; resume dispatch <= 1.5x plan time;
  status < 1 s
- multi: three manifests in one run (3 x 700 shots, cap 50): slots held at the cap over
  >= 95% of the makespan, never above it (no concurrency refusal)

``python -m benchmarks.run_all [--quick] [--only plan,run,scale,multi]``; ``--only status`` runs
benchmarks/bench_status.py (status and report queries on a ledger built in process; not
in the default set).
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

BENCHES = ("plan", "run", "scale", "multi")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--only", default=",".join(BENCHES))
    args = parser.parse_args()
    results: dict[str, Any] = {
        "machine": {"python": sys.version.split()[0], "platform": platform.platform()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    for name in args.only.split(","):
        module = importlib.import_module(f"benchmarks.bench_{name}")
        print(f"== {name}", flush=True)
        results[name] = module.main(quick=args.quick)
    out = Path("benchmarks/results")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"results written to {path}")


if __name__ == "__main__":
    main()
