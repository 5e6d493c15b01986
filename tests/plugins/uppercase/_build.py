"""A minimal PEP 517 build backend: one module, its metadata and entry points, in a wheel."""

from __future__ import annotations

import base64
import hashlib
import tomllib
import zipfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent


def _project() -> dict[str, Any]:
    return tomllib.loads((HERE / "pyproject.toml").read_text())["project"]


def _dist_files(project: dict[str, Any]) -> dict[str, str]:
    name = project["name"].replace("-", "_")
    info = f"{name}-{project['version']}.dist-info"
    entry = "".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n"
        for group, eps in project.get("entry-points", {}).items()
    )
    return {
        "ags_etl_uppercase.py": (HERE / "ags_etl_uppercase.py").read_text(),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
        f"Summary: {project['description']}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: _build\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/entry_points.txt": entry,
    }


def get_requires_for_build_wheel(config_settings: Any = None) -> list[str]:
    return []


def build_wheel(wheel_directory: str, config_settings: Any = None, metadata_directory: Any = None) -> str:
    project = _project()
    files = _dist_files(project)
    name = project["name"].replace("-", "_")
    info = f"{name}-{project['version']}.dist-info"
    wheel_name = f"{name}-{project['version']}-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(Path(wheel_directory) / wheel_name, "w") as zf:
        for arcname, text in files.items():
            data = text.encode()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{arcname},sha256={digest},{len(data)}")
            zf.writestr(arcname, data)
        record.append(f"{info}/RECORD,,")
        zf.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return wheel_name
