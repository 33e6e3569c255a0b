"""Rolling a newly promoted champion out: build its bento, restart the local service on it, bump the k8s tag.

Each part is optional: no running local service means nothing to restart; no configured overlay
(`MLSTACK_K8S_OVERLAY`) means no manifest to update. The image tag written to the overlay is the
bento version, so the image is expected as `mlstack/credit-risk:<bento version>`
(`bentoml containerize <bento tag> -t mlstack/credit-risk:<bento version>`).
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from mlstack.errors import StackError
from mlstack.serving.bento import BENTO_NAME, BuiltBento, build_bento
from mlstack.settings import Settings
from mlstack.stack.service import LocalService, running_service, start_service, stop_service
from mlstack.training import registry

SERVICE_IMAGE = "mlstack/credit-risk"


class RolloutError(StackError):
    """The rollout could not finish; the message says which part and what is left as it was."""


@dataclass(frozen=True)
class Rollout:
    """What a rollout did: the bento built, the restarted local service (if any), the overlay updated (if any)."""

    bento: BuiltBento
    service: LocalService | None
    overlay: Path | None

    def summary(self) -> str:
        """One line for logs."""
        parts = [f"bento {self.bento.tag}"]
        parts.append(f"local service restarted at {self.service.url}" if self.service else "no local service running")
        parts.append(f"overlay {self.overlay} now uses tag {self.bento.tag.split(':', 1)[1]}" if self.overlay else "")
        return "; ".join(part for part in parts if part)


def roll_out(settings: Settings) -> Rollout:
    """Build the champion's bento, then roll the local service and the overlay onto it.

    One rollout at a time per state dir; the champion is marked as rolled out first, so the registry
    watcher does not announce a promotion that its own flow is rolling out.
    """
    with _rollout_lock(settings):
        return _roll_out(settings)


def roll_out_if_needed(settings: Settings) -> Rollout | None:
    """`roll_out`, unless the local service already serves a bento of the current champion (None then).

    What the `mlstack.model.promoted` event runs: the same move may be announced while the flow that
    made it rolls it out itself; whichever comes second finds the work done.
    """
    with _rollout_lock(settings):
        champion = registry.champion_version(settings)
        if champion is None:
            raise RolloutError(f"model {settings.model_name!r} has no @champion: nothing to roll out")
        if serves_version(settings, str(champion.version)):
            return None
        return _roll_out(settings)


def serves_version(settings: Settings, version: str) -> bool:
    """True when the running local service serves a bento of registered `version` (`credit-risk:mlflow-v<N>-…`)."""
    service = running_service(settings)
    return service is not None and service.target.startswith(f"{BENTO_NAME}:mlflow-v{version}-")


def _roll_out(settings: Settings) -> Rollout:
    champion = registry.champion_version(settings)
    if champion is not None:
        registry.mark_rolled_out(settings, str(champion.version))
    bento = build_bento(settings)
    service = restart_local_service(settings, bento.tag)
    overlay = set_overlay_image_tag(settings.k8s_overlay, bento.tag.split(":", 1)[1]) if settings.k8s_overlay else None
    return Rollout(bento, service, overlay)


@contextlib.contextmanager
def _rollout_lock(settings: Settings) -> Iterator[None]:
    """Exclusive lock of this state dir's rollouts (a bento build takes a while: waiters simply wait)."""
    path = settings.service_dir / "rollout.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def restart_local_service(settings: Settings, bento_tag: str) -> LocalService | None:
    """Restart a running local service on `bento_tag`, same port (graceful stop flushes its profiles)."""
    current = running_service(settings)
    if current is None:
        return None
    port = int(current.url.rsplit(":", 1)[1])
    stop_service(settings)
    return start_service(settings, {}, port, target=bento_tag)


def set_overlay_image_tag(overlay: Path, tag: str, image: str = SERVICE_IMAGE) -> Path:
    """Set `newTag` of `image` in the overlay's kustomization.yaml (adds the entry if absent); returns the file."""
    path = Path(overlay) / "kustomization.yaml"
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise RolloutError(f"no kustomization.yaml in the overlay {overlay} (setting k8s_overlay)") from exc
    images = document.setdefault("images", [])
    entry = next((item for item in images if item.get("name") == image), None)
    if entry is None:
        images.append({"name": image, "newTag": tag})
    else:
        entry["newTag"] = tag
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(yaml.safe_dump(document, sort_keys=False))
    temporary.replace(path)
    return path
