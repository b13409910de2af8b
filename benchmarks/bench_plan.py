"""Plan benchmark: validate + plan a 100,000-shot explicit manifest.

Generates the manifest in a temporary directory (text shots with explicit ids, seeds and
a mix of qualities, durations and motion modes, plus one image shot in 500 sharing one
local PNG), then times, each in a fresh subprocess (so peak RSS is per measurement):

- ``bare load``: ``yaml.load(data, Loader=yaml.CSafeLoader)``, PyYAML's C loader alone,
  as a program would call it (cyclic GC on, as by default);
- ``bare load, GC off``: the same with the cyclic GC disabled, shown because pixrun's
  loader pauses the GC while it builds (see runner/manifest/loader.py) and this is the
  stricter comparison;
- ``validate + plan``: ``load_manifest`` (YAML, shape, rules, ids, image checks,
  hashes, prices) then ``build_plan``;
- ``validate + plan, from a CSV``: the same shots as rows of ``shots_from: bench.csv``
  (issue 16), so a table's cost is read against the YAML's;
- ``jsonschema alone`` (once, for reference): ``Draft202012Validator.is_valid`` over
  the loaded document, the check runner/manifest/validate.py runs (its messages aside).

Each timed measurement is repeated (default 3, ``--quick``: 1 on 20,000 shots) and the
minimum is kept. Targets: validate + plan <= 1.5 x bare load, peak RSS < 1 GB.

``python -m benchmarks.bench_plan [--quick]``; ``main()`` returns the numbers as a dict.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.machine import bench_dir, byte_compile

TARGET_RATIO = 1.5
TARGET_PEAK_MB = 1024
IMAGE_EVERY = 500

_QUALITIES = ("360p", "540p", "720p", "1080p")
_MODELS = ("v3.5", "v4", "v4.5", "v5.5")


def write_manifest(folder: Path, shots: int) -> Path:
    """An explicit manifest of ``shots`` shots (no count/vary), block style."""
    from PIL import Image

    (folder / "images").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (320, 320), (40, 90, 160)).save(folder / "images" / "ref.png")
    lines = [
        "# yaml-language-server: $schema=../schemas/manifest.schema.json",
        "version: 1",
        "name: bench",
        "defaults:",
        "  model: v4.5",
        "  motion_mode: normal",
        "run:",
        "  concurrency: 50",
        "  budget_ptc: 1000000",
        "output:",
        '  filename: "{mode}/{shot_id}.mp4"',
        "shots:",
    ]
    for i in range(shots):
        quality = _QUALITIES[i % 4]
        duration = 5 if quality == "1080p" or i % 3 else 8
        lines.append(f"  - id: shot-{i:06d}")
        if i % IMAGE_EVERY == 0:
            lines.append(f"    prompt: The reference image comes alive, variation {i}")
            lines.append("    image: images/ref.png")
            lines.append("    model: v4")
        else:
            lines.append(
                f'    prompt: "A lighthouse in a storm at night, waves crashing, take {i}"'
            )
            lines.append(f"    model: {_MODELS[i % 4]}")
        lines.append(f"    quality: {quality}")
        lines.append(f"    duration: {duration}")
        lines.append(f"    seed: {i}")
        if quality in ("360p", "540p") and i % 7 == 0:
            lines.append("    motion_mode: fast")
    path = folder / "bench.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_table(folder: Path, shots: int) -> Path:
    """The same shots as :func:`write_manifest`, as the rows of a CSV table that a
    short manifest names in ``shots_from`` (the image is the one written there)."""
    rows = ["id,prompt,image,model,quality,duration,seed,motion_mode"]
    for i in range(shots):
        quality = _QUALITIES[i % 4]
        duration = 5 if quality == "1080p" or i % 3 else 8
        if i % IMAGE_EVERY == 0:
            prompt, image, model = (
                f"The reference image comes alive, variation {i}",
                "images/ref.png",
                "v4",
            )
        else:
            prompt = f"A lighthouse in a storm at night, waves crashing, take {i}"
            image, model = "", _MODELS[i % 4]
        motion = "fast" if quality in ("360p", "540p") and i % 7 == 0 else ""
        rows.append(f'shot-{i:06d},"{prompt}",{image},{model},{quality},{duration},{i},{motion}')
    (folder / "bench.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    path = folder / "bench-table.yaml"
    path.write_text(
        "version: 1\nname: bench\ndefaults:\n  model: v4.5\n  motion_mode: normal\n"
        "run:\n  concurrency: 50\n  budget_ptc: 1000000\n"
        'output:\n  filename: "{mode}/{shot_id}.mp4"\nshots_from: bench.csv\n',
        encoding="utf-8",
    )
    return path


# ---- the measurements, each run in a fresh interpreter ----------------------------

_WORKER = r"""
import gc, json, resource, sys, time
from pathlib import Path
kind, path = sys.argv[1], Path(sys.argv[2])
result = {}
if kind in ("bare", "bare_gc_off", "jsonschema"):
    import yaml
    data = path.read_bytes()
    if kind == "bare_gc_off":
        gc.disable()
    t0 = time.perf_counter()
    doc = yaml.load(data, Loader=yaml.CSafeLoader)
    result["seconds"] = time.perf_counter() - t0
    gc.enable()
    if kind == "jsonschema":
        import jsonschema
        from runner.manifest.schema import manifest_schema
        validator = jsonschema.Draft202012Validator(manifest_schema())
        t0 = time.perf_counter()
        assert validator.is_valid(doc)
        result["seconds"] = time.perf_counter() - t0
elif kind == "plan":
    from runner.manifest import load_manifest
    from runner.plan import build_plan
    t0 = time.perf_counter()
    manifest = load_manifest(path)
    plan = build_plan(manifest)
    result["seconds"] = time.perf_counter() - t0
    result["shots"] = plan.shot_count
    result["total_ptc"] = str(plan.total_ptc)
    result["unpriced"] = plan.unpriced_count
# VmHWM is this program's own peak. On Linux ru_maxrss also counts the peak of the
# benchmark process that spawned it (kept across vfork+exec), a floor of ~100 MB here.
peak_kb = None
try:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                peak_kb = int(line.split()[1])
except OSError:
    pass
if peak_kb is None:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_kb = peak / 1024 if sys.platform == "darwin" else peak
result["peak_mb"] = peak_kb / 1024
print(json.dumps(result))
"""


def measure(kind: str, path: Path) -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", _WORKER, kind, str(path)],
        check=True,
        capture_output=True,
        text=True,
        cwd=root,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def best_of(kind: str, path: Path, repeat: int) -> dict[str, Any]:
    runs = [measure(kind, path) for _ in range(repeat)]
    best = min(runs, key=lambda r: float(r["seconds"]))
    best["peak_mb"] = max(float(r["peak_mb"]) for r in runs)
    best["all_seconds"] = [round(float(r["seconds"]), 3) for r in runs]
    return best


def main(quick: bool = False) -> dict[str, Any]:
    shots = 20_000 if quick else 100_000
    repeat = 1 if quick else 3
    byte_compile()  # the timed imports load bytecode, as an installed package does
    with tempfile.TemporaryDirectory(prefix="pixrun-bench-plan-", dir=bench_dir()) as tmp:
        path = write_manifest(Path(tmp), shots)
        size_mb = path.stat().st_size / 1e6
        bare = best_of("bare", path, repeat)
        bare_off = best_of("bare_gc_off", path, repeat)
        plan = best_of("plan", path, repeat)
        schema = measure("jsonschema", path)
        table = best_of("plan", write_table(Path(tmp), shots), repeat)
    assert plan["shots"] == shots, plan
    assert (table["shots"], table["total_ptc"]) == (shots, plan["total_ptc"]), table
    ratio = plan["seconds"] / bare["seconds"]
    ratio_off = plan["seconds"] / bare_off["seconds"]
    result = {
        "shots": shots,
        "file_mb": round(size_mb, 1),
        "repeat": repeat,
        "bare_load_s": round(bare["seconds"], 3),
        "bare_load_gc_off_s": round(bare_off["seconds"], 3),
        "validate_plan_s": round(plan["seconds"], 3),
        "jsonschema_alone_s": round(schema["seconds"], 3),
        "table_validate_plan_s": round(table["seconds"], 3),
        "peak_mb_table": round(table["peak_mb"], 1),
        "ratio": round(ratio, 2),
        "ratio_vs_gc_off": round(ratio_off, 2),
        "peak_mb_bare": round(bare["peak_mb"], 1),
        "peak_mb_plan": round(plan["peak_mb"], 1),
        "total_ptc": plan["total_ptc"],
        "unpriced": plan["unpriced"],
        "target_ratio": TARGET_RATIO,
        "target_peak_mb": TARGET_PEAK_MB,
        "ok": ratio <= TARGET_RATIO and plan["peak_mb"] < TARGET_PEAK_MB,
        "runs_s": {
            "bare": bare["all_seconds"],
            "bare_gc_off": bare_off["all_seconds"],
            "validate_plan": plan["all_seconds"],
            "table_validate_plan": table["all_seconds"],
        },
    }
    print_table(result)
    return result


def print_table(r: dict[str, Any]) -> None:
    print(f"plan benchmark: {r['shots']:,} shots, {r['file_mb']} MB, best of {r['repeat']}")
    rows = [
        ("bare load (CSafeLoader)", r["bare_load_s"], r["peak_mb_bare"], "1.00x"),
        ("bare load, GC off", r["bare_load_gc_off_s"], None, ""),
        ("validate + plan", r["validate_plan_s"], r["peak_mb_plan"], f"{r['ratio']:.2f}x"),
        ("jsonschema alone (ref.)", r["jsonschema_alone_s"], None, ""),
        (
            "validate + plan, CSV",
            r["table_validate_plan_s"],
            r["peak_mb_table"],
            f"{r['table_validate_plan_s'] / r['bare_load_s']:.2f}x",
        ),
    ]
    print(f"  {'measurement':<26}{'seconds':>9}{'peak MB':>10}{'vs bare':>9}")
    for name, seconds, peak, vs in rows:
        peak_text = f"{peak:.0f}" if peak is not None else "-"
        print(f"  {name:<26}{seconds:>9.2f}{peak_text:>10}{vs:>9}")
    verdict = "meets" if r["ok"] else "MISSES"
    print(
        f"  validate + plan / bare load = {r['ratio']:.2f} (target <= {r['target_ratio']}); "
        f"vs bare load with GC off = {r['ratio_vs_gc_off']:.2f}; "
        f"peak {r['peak_mb_plan']:.0f} MB (target < {r['target_peak_mb']}): {verdict} targets"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 shots, one run each")
    args = parser.parse_args()
    outcome = main(quick=args.quick)
    sys.exit(0 if outcome["ok"] else 1)
