"""Packaging: a self-contained bento with the champion Booster inside, built by `bentoml build`.

The build context is staged in a temporary directory: the `services`, `mlstack` and `feature_store`
packages, the locked runtime requirements (`uv export` of uv.lock), and `model/` — the @champion
Booster pulled from MLflow by alias at build time (native text format), its calibrator (JSON
numbers) and its lineage. The bento
version is `mlflow-v<version>-<fingerprint>`, so the tag says which registered model is inside.
At run time the service loads `model/` when it is there (a bento) and asks MLflow otherwise (source).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import lightgbm

from mlstack.errors import StackError
from mlstack.settings import PROJECT_ROOT, Settings, stack_environment
from mlstack.training import registry
from mlstack.training.calibration import CALIBRATOR_FILE, IDENTITY, Calibrator

BENTO_NAME = "credit-risk"
BENTOFILE = PROJECT_ROOT / "services" / "bentofile.yaml"
MODEL_DIR_NAME = "model"
BOOSTER_FILE = "booster.txt"
MODEL_INFO_FILE = "model.json"
PACKAGES = ("mlstack", "services", "feature_store")


class BentoError(StackError):
    """The bento could not be built or read; the message says which step and why."""


@dataclass(frozen=True)
class BundledModel:
    """A "booster + calibrator" shipped inside a bento, with the registry coordinates it was pulled from."""

    booster: lightgbm.Booster
    calibrator: Calibrator
    name: str
    version: str
    info: dict[str, str]


@dataclass(frozen=True)
class BuiltBento:
    """The result of `build_bento`: the tag (`credit-risk:mlflow-v3-…`), where it lives, what is inside."""

    tag: str
    path: Path
    model_version: str
    dockerfile: Path


def bundled_model_dir() -> Path:
    """Where a bento carries its model: `model/` beside the packages (absent in a source checkout)."""
    return PROJECT_ROOT / MODEL_DIR_NAME


def load_bundled_model(directory: Path | None = None) -> BundledModel | None:
    """The model shipped in `directory` (default: the bento's `model/`); None when there is none.

    A bento built before calibration existed has no calibrator file: it serves the Booster as it is.
    """
    directory = directory or bundled_model_dir()
    booster_file, info_file = directory / BOOSTER_FILE, directory / MODEL_INFO_FILE
    calibrator_file = directory / CALIBRATOR_FILE
    if not booster_file.is_file():
        return None
    try:
        info = json.loads(info_file.read_text())
        booster = lightgbm.Booster(model_file=str(booster_file))
        calibrator = Calibrator.from_json(calibrator_file.read_text()) if calibrator_file.is_file() else IDENTITY
    except (OSError, ValueError, lightgbm.basic.LightGBMError) as exc:
        raise BentoError(f"the bundled model in {directory} is unreadable: {exc}") from exc
    return BundledModel(booster, calibrator, info["model_name"], str(info["model_version"]), info)


def export_champion(settings: Settings, destination: Path) -> dict[str, str]:
    """Write @champion's Booster (text format), calibrator (JSON) and lineage into `destination`; returns lineage."""
    champion = registry.load_booster(settings, "@champion")
    version = champion.model_version
    destination.mkdir(parents=True, exist_ok=True)
    champion.booster.save_model(str(destination / BOOSTER_FILE))
    (destination / CALIBRATOR_FILE).write_text(champion.calibrator.to_json())
    info = {
        "model_name": settings.model_name,
        "model_version": champion.version,
        "run_id": version.run_id or "",
        "source": _redact(settings.tracking_uri()),
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "booster_sha256": hashlib.sha256((destination / BOOSTER_FILE).read_bytes()).hexdigest(),
        "calibrator_sha256": hashlib.sha256((destination / CALIBRATOR_FILE).read_bytes()).hexdigest(),
        **{f"tag.{key}": value for key, value in sorted(version.tags.items())},
    }
    (destination / MODEL_INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info


def _redact(uri: str) -> str:
    """A URI without the password part (`user:secret@host` → `user:***@host`)."""
    scheme, _, rest = uri.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return uri
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"


def stage_context(settings: Settings, context: Path) -> dict[str, str]:
    """Lay out a clean build context in `context`; returns the model lineage written into it."""
    if context.exists():
        shutil.rmtree(context)
    context.mkdir(parents=True)
    for package in PACKAGES:
        shutil.copytree(PROJECT_ROOT / package, context / package, ignore=_not_shipped)
    shutil.copy2(BENTOFILE, context / "bentofile.yaml")
    (context / "requirements.txt").write_text(_locked_requirements())
    return export_champion(settings, context / MODEL_DIR_NAME)


_CACHES_AND_STATE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.db", "*.parquet")


def _not_shipped(directory: str, names: list[str]) -> set[str]:
    """What `copytree` leaves out of the build context: caches and local state, e.g. a `data` dir of parquet.

    A `data` directory that is a package (`mlstack/data`) is code and is shipped.
    """
    ignored = set(_CACHES_AND_STATE(directory, names))
    return ignored | {
        name for name in names if name == "data" and not (Path(directory) / name / "__init__.py").is_file()
    }


def _locked_requirements() -> str:
    """The runtime dependencies pinned by uv.lock (no dev tools, not the project itself)."""
    uv = _uv()
    command = [uv, "export", "--frozen", "--no-dev", "--no-hashes", "--no-emit-project", "--no-header"]
    try:
        result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, check=True, timeout=120)
    except FileNotFoundError as exc:
        raise BentoError(
            f"uv is needed to export the locked requirements and was not found ({uv}): run `make install`"
        ) from exc
    except subprocess.CalledProcessError as exc:
        raise BentoError(f"`uv export` failed: {exc.stderr.strip()[-500:]}") from exc
    return result.stdout


def _uv() -> str:
    """The uv binary: the one `make` bootstrapped (MLSTACK_UV), else uv on PATH, else the private copy."""
    return os.environ.get("MLSTACK_UV") or shutil.which("uv") or str(PROJECT_ROOT / ".mlstack" / "tools" / "bin" / "uv")


def bento_version(info: dict[str, str]) -> str:
    """`mlflow-v<version>-<first 8 of the Booster's sha256>`: the registered version, plus the exact bytes."""
    return f"mlflow-v{info['model_version']}-{info['booster_sha256'][:8]}"


def build_bento(settings: Settings) -> BuiltBento:
    """Stage the context, run `bentoml build`, return the tag and the generated Dockerfile's path."""
    # BentoML refuses build contexts under hidden directories (like the default .mlstack/): stage in tmp.
    with tempfile.TemporaryDirectory(prefix="mlstack-bento-") as staging:
        return _build_in(settings, Path(staging) / "context")


def _build_in(settings: Settings, context: Path) -> BuiltBento:
    info = stage_context(settings, context)
    version = bento_version(info)
    env = {**os.environ, **stack_environment(settings)}
    # `bentoml build` runs uv (and pip-installs it when it is not on PATH, which fails offline).
    env["PATH"] = os.pathsep.join([str(Path(_uv()).parent), env.get("PATH", "")])
    command = [
        sys.executable,
        "-m",
        "bentoml",
        "build",
        str(context),
        "--version",
        version,
        "--label",
        f"mlflow_model_version={info['model_version']}",
        "--label",
        f"mlflow_model_name={info['model_name']}",
        "--label",
        f"semantic_version={info.get('tag.semantic_version', 'none')}",
        "--output",
        "tag",
    ]
    result = subprocess.run(command, cwd=context, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise BentoError(f"`bentoml build` failed ({result.returncode}): {(result.stderr or result.stdout)[-2000:]}")
    tag = f"{BENTO_NAME}:{version}"
    path = Path(env["BENTOML_HOME"]) / "bentos" / BENTO_NAME / version
    if not path.is_dir():
        raise BentoError(f"`bentoml build` reported success but {path} does not exist:\n{result.stdout[-1000:]}")
    return BuiltBento(tag, path, info["model_version"], path / "env" / "docker" / "Dockerfile")
