"""Build the Go programs of tests/ (each its own module whose dependencies are upstream
Kubernetes modules) into .cache/go-bin/, once per test run.

`go build` is incremental (Go's build cache), so a rebuild with nothing changed takes a
second or two; `make go-tools` runs the same builds before pytest so that a cold build
(minutes on 2 cores) is never charged to one test's timeout. A missing Go toolchain or a
failing build fails loudly: these checks are never skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = ROOT / ".cache" / "go-bin"

# name -> module folder, relative to the repository root
PROGRAMS = {
    "crdcost": "tests/api/crdcost",
}


def build(name: str, timeout: float = 1800) -> Path:
    """The path of program `name`, built now if its sources or dependencies changed."""
    go = shutil.which("go")
    if go is None:
        raise RuntimeError("the Go toolchain is not installed: tests need `go` (Go 1.26 or newer) on PATH")
    module = ROOT / PROGRAMS[name]
    out = BIN_DIR / name
    BIN_DIR.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [go, "build", "-o", str(out), "."], cwd=module, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "GOFLAGS": os.environ.get("GOFLAGS", "") + " -mod=readonly"},
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"go build of {PROGRAMS[name]} failed:\n{result.stderr[-4000:]}")
    return out


def main() -> int:
    import time

    import real_cluster  # the control plane, Kueue and the training operator (tests/cluster/)

    for name in PROGRAMS:
        print(f"go-tools: {name} -> {build(name)}", flush=True)
    started = time.monotonic()
    for path in real_cluster.build_all():
        print(f"go-tools: {path.relative_to(ROOT)}", flush=True)
    print(f"go-tools: real cluster binaries up to date in {time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    raise SystemExit(main())
