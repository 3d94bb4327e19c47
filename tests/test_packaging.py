"""Installed the ordinary way (a built wheel, not editable), the package is the same tool.

The wheel is built from this checkout and installed into a fresh virtual environment that sees
the already-installed dependencies but not the source tree; every command then runs from a folder
outside it. What it catches: a file read at run time that is not package data (the task registry,
the shipped configs), a module missing from the wheel, an undeclared dependency import path.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_wheel_installs_into_a_fresh_environment_and_runs_outside_the_source_tree(tmp_path, tiny_bert_dir):
    # Build from a copy of what the wheel is made of, so the build leaves nothing in the checkout.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("llm_meta", "recipes"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(dist),
          str(source)], cwd=tmp_path)
    wheel = next(dist.glob("llm_meta-*.whl"))
    env_dir = tmp_path / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], cwd=tmp_path)
    python = env_dir / "bin" / "python"
    # The dependencies come from this environment's site-packages, added as a plain path: its .pth
    # files (among them the editable install of this checkout) are not processed there.
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path).strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", "--no-index",
          str(wheel)], cwd=tmp_path)

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    # the package, the recipes and the shipped configs come from the installed wheel, wherever it runs
    where = _run([str(python), "-c", "import llm_meta, recipes; from llm_meta.config import resolve_config_path as r; "
                  "print(llm_meta.__file__, recipes.__file__, r('recipes/configs/meta_train.yaml'))"], work, env)
    assert str(ROOT) not in where and all(p.startswith(str(env_dir)) for p in where.split()), where
    assert Path(where.split()[2]).is_file()
    llm = str(env_dir / "bin" / "llm-meta")

    tasks = _run([llm, "tasks"], work, env)
    assert any(line.split()[:3] == ["banking77", "held_out", "77"] for line in tasks.splitlines()), tasks
    assert "banking77" in _run([llm, "episode", "banking77", "--n-way", "3", "--k-shot", "1"], work, env)
    (work / "support.csv").write_text("\ufefftext,label\r\nmy card is lost,01\r\nwhat is my balance,02\r\n"
                                      "lost my card,01\r\nshow my balance,02\r\n", encoding="utf-8")
    _run([llm, "adapt", "--adapter", "none", "--support", "support.csv", "--output", "model",
          f"model.name={tiny_bert_dir}", "inner.steps=1"], work, env)
    rows = [json.loads(line) for line in _run([llm, "predict", "--model", "model", "--input", "support.csv"],
                                              work, env).splitlines()]
    assert [r["text"] for r in rows] == ["my card is lost", "what is my balance", "lost my card", "show my balance"]
    assert {r["label"] for r in rows} <= {"01", "02"}
