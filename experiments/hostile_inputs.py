"""Peak memory and wall time of `llm-meta predict` on inputs too large to hold or to tokenise whole.

    .venv/bin/python experiments/hostile_inputs.py [--lines 10000 1000000] [--line-mb 2000] [--model tiny]

Writes the inputs into a temporary folder: files of N short lines (one text per line), and one
file whose first line is `--line-mb` megabytes long (followed by one short line). Adapts a task
model (`tiny`: a randomly initialised 2-layer BERT built here, so the run measures the reading
and writing, not the body; or a model name such as all-MiniLM-L6-v2), then runs the real command
`llm-meta predict --model M --input FILE --output OUT.jsonl` once per input in its own process
and reports that process's peak resident memory (ru_maxrss) and wall time. Memory that does not
grow with N is what streaming means; a single line is held whole once (the output repeats it),
and only the characters the model can read are tokenised.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "llm_meta.cli"]


def measured(argv: list[str]) -> tuple[float, float, str]:
    """(peak RSS in MiB, seconds, stderr's last line) of one command in a fresh process."""
    probe = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
             "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.perf_counter() - t, p.returncode); "
             "sys.stderr.write(p.stderr)")
    done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, cwd=ROOT,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    kib, seconds, rc = done.stdout.split()
    if rc != "0":
        raise RuntimeError(done.stderr[-2000:])
    warned = [line for line in done.stderr.splitlines() if "WARNING" in line]
    return int(kib) / 1024, float(seconds), warned[-1] if warned else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--line-mb", type=int, default=2000, help="size of the one long line, in MB (0: skip)")
    parser.add_argument("--model", default="tiny", help="tiny, or a model name (e.g. all-MiniLM-L6-v2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        name = args.model
        if name == "tiny":
            sys.path.insert(0, str(ROOT))
            from tests.tiny import make_tiny_model

            name = str(make_tiny_model("bert", tmp / "tiny_bert"))
        support = tmp / "support.csv"
        support.write_text("text,label\n" + "".join(f"{t} {i},{t.split()[0]}\n" for t in
                                                    ("card payment", "music playlist", "weather forecast")
                                                    for i in range(5)))
        subprocess.run([*CLI, "adapt", "--adapter", "none", "--support", str(support), "--output", str(tmp / "model"),
                        f"model.name={name}", "inner.steps=1"], check=True, cwd=ROOT, capture_output=True)
        rows = []
        for n in args.lines:
            path = tmp / f"lines_{n}.txt"
            with path.open("w") as f:
                for i in range(n):
                    f.write(f"where is my card number {i}\n")
            rows.append((f"{n:,} lines ({path.stat().st_size / 2**20:.0f} MiB)", path))
        if args.line_mb:
            path = tmp / "one_line.txt"
            piece = "card payment " * 80_000  # ~1 MB
            with path.open("w") as f:
                for _ in range(args.line_mb * 10**6 // len(piece)):
                    f.write(piece)
                f.write("\nmusic playlist\n")
            rows.append((f"one line of {path.stat().st_size / 10**6:,.0f} MB", path))
        print(f"model: {args.model}; llm-meta predict --output x.jsonl, one process per input")
        print(f"{'input':<32} {'peak RSS MiB':>12} {'seconds':>9}  warning")
        for label, path in rows:
            peak, seconds, warned = measured([*CLI, "predict", "--model", str(tmp / "model"), "--input", str(path),
                                              "--output", str(tmp / "out.jsonl"), "--overwrite"])
            lines = sum(1 for _ in (tmp / "out.jsonl").open())
            print(f"{label:<32} {peak:>12.0f} {seconds:>9.1f}  ({lines:,} output lines) {warned[:150]}")
        print(json.dumps({"python": sys.version.split()[0]}))


if __name__ == "__main__":
    main()
