"""Wall time of four `llm-meta` commands on an idle machine and beside one competing process, at a
chosen thread setting: the evidence for `llm_meta/threads.py`'s policy.

    .venv/bin/python experiments/threads.py [--before SRC] [--repeats 1] [--out FILE.json]

Commands (each in a fresh process, the way a user runs them; wall time includes start-up):
  adapt-16   `adapt --adapter none --task mcid --shots 5` (16 classes, 80 support texts)
  adapt-77   `adapt --adapter none --task banking77 --shots 5` (77 classes, 385 support texts)
  predict    `predict` of 3,000 BANKING77 test texts with the adapt-16 model
  meta-train 20 FOMAML steps of the default config (validation 5-way, 1 episode; no test phase)
Settings: `auto` (the policy), `--threads 1`, and with `--before SRC` (a checkout of the commit
before the policy) that code at torch's own default (one OpenMP thread per core, libgomp's default
wait policy). The competing process is one single-threaded CPU-bound loop, as another job on a
laptop or a CI runner. Prints a Markdown table: seconds, and the ratio to `--threads 1` on the
same machine state.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOG = "while True: pass"


def commands(work: Path) -> dict[str, list[str]]:
    return {
        "adapt-16": ["adapt", "--adapter", "none", "--task", "mcid", "--shots", "5", "--output",
                     str(work / "m16"), "--overwrite"],
        "adapt-77": ["adapt", "--adapter", "none", "--task", "banking77", "--shots", "5", "--output",
                     str(work / "m77"), "--overwrite"],
        "predict": ["predict", "--model", str(work / "m16"), "--input", str(work / "in.txt"), "--output",
                    str(work / "out.jsonl"), "--overwrite"],
        "meta-train": ["meta-train", "--config", str(ROOT / "recipes/configs/meta_train.yaml"), "--overwrite",
                       f"output_dir={work / 'mt'}", "outer.steps=20", "validate_every=1000", "test.episodes=0",
                       "validation.n_way=5", "validation.episodes=1"],
    }


def run(argv: list[str], setting: str, before: str | None) -> float:
    """Seconds of one command in a fresh process at `setting` ("auto", "1" or "before")."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "LLM_META_THREADS")}
    env["HF_HUB_OFFLINE"] = "1"
    if setting == "before":  # the earlier checkout's code, first on the path
        env["PYTHONPATH"] = before
        launcher = [sys.executable, "-c", "import sys; from llm_meta.cli import main; sys.argv[0] = 'llm-meta'; main()"]
    else:
        launcher = [sys.executable, "-m", "llm_meta.cli"]
        env["LLM_META_THREADS"] = setting
    start = time.perf_counter()
    done = subprocess.run([*launcher, *argv], capture_output=True, text=True, env=env,
                          cwd=before if setting == "before" else ROOT)
    if done.returncode:
        raise RuntimeError(f"{argv[0]} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default=None, help="a checkout of the code before the thread policy")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "experiments/results/threads.json"))
    args = parser.parse_args()
    settings = ["auto", "1"] + (["before"] if args.before else [])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sys.path.insert(0, str(ROOT))
        from llm_meta.data.tasks import load_task

        texts = [t.replace("\n", " ") for t in load_task("banking77").splits["test"]["text"][:3000]]
        (work / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
        cmds = commands(work)
        run(cmds["adapt-16"], "auto", None)  # the model predict reads, and a warm file cache
        results: dict[str, dict[str, dict[str, list[float]]]] = {}
        for state in ("idle", "busy"):
            hog = subprocess.Popen([sys.executable, "-c", HOG]) if state == "busy" else None
            time.sleep(1.0 if hog else 0.0)
            try:
                for name, argv in cmds.items():
                    for setting in settings:
                        times = [run(argv, setting, args.before) for _ in range(args.repeats)]
                        results.setdefault(name, {}).setdefault(state, {})[setting] = times
                        print(f"{name} {state} {setting}: {' '.join(f'{t:.1f}' for t in times)} s", flush=True)
            finally:
                if hog:
                    hog.kill()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"cores": len(os.sched_getaffinity(0)), "results": results}, indent=1))
    best = {n: {s: {k: min(v) for k, v in r.items()} for s, r in by.items()} for n, by in results.items()}
    cols = [(s, k) for s in ("idle", "busy") for k in settings]
    print("\n| command | " + " | ".join(f"{s}, {'threads 1' if k == '1' else k}" for s, k in cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, by in best.items():
        cells = [f"{by[s][k]:.1f} s ({by[s][k] / by[s]['1']:.2f}x)" for s, k in cols]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
