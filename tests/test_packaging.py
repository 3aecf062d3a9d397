"""Packaging: a non-editable install carries its migrations and starts."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")


@pytest.mark.timeout(180)
def test_a_built_wheel_ships_the_migrations_and_migrates_a_new_database(tmp_path: Path) -> None:
    # Build from a copy of exactly what a clean clone holds, so a stale
    # build/ directory in the working tree cannot leak into the wheel.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "sidecar", "migrations"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, src / name, **({"ignore": IGNORE} if copy is shutil.copytree else {}))
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(src)],
        check=True, capture_output=True, cwd=tmp_path,
    )
    (wheel,) = wheels.glob("capi_sidecar-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n for n in names if n.startswith("sidecar/migrations/") and n.endswith(".sql"))
    expected = [f"sidecar/migrations/{p.name}" for p in (ROOT / "migrations").glob("*.sql")]
    assert shipped == sorted(expected)
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
         str(wheel)],
        check=True, capture_output=True,
    )
    db = tmp_path / "outbox.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPI_")}
    env.update(PYTHONPATH=str(site), CAPI_DB_PATH=str(db))
    # Run from tmp_path so the source tree is not on sys.path.
    out = subprocess.run(
        [sys.executable, "-c",
         "import sidecar, sys; from sidecar.cli import main; "
         "print(sidecar.__file__); sys.exit(main(['migrate']))"],
        check=True, capture_output=True, text=True, env=env, cwd=tmp_path,
    )
    assert out.stdout.splitlines()[0].startswith(str(site))
    tables = {r[0] for r in sqlite3.connect(db).execute("SELECT name FROM sqlite_master")}
    assert {"events", "deliveries", "schema_migrations"} <= tables
