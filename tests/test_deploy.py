"""Deployment files, checked without Docker: docker-compose.yml, the Dockerfile, the nightly
scheduler (scripts/nightly_scheduler.py) and the commands docs/OPERATIONS.md tells people to run.

- the compose file has the services, volumes, healthcheck and commands docs/OPERATIONS.md
  describes, and every `recsys-mtl` subcommand and option it uses exists;
- the Dockerfile installs exactly the torch / torchrec / FBGEMM versions scripts/setup_venv.sh
  pins: both install steps are run with stand-ins for pip and python that only record their
  arguments, and the recorded requirements are compared;
- the scheduler's date arithmetic (UTC), exit-code reporting, lock, loop and signal handling, run
  with stand-in commands (`sh -c 'exit 4'`) in place of the nightly job;
- the documented rollback one-liner, the metric names, and the YAML / Python examples of the docs.

`docker compose config` (or the standalone docker-compose) runs where one is installed.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import http.server
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from recsys_mtl.registry import Registry
from tests.conftest import BIN, ROOT

COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
SETUP_VENV = ROOT / "scripts" / "setup_venv.sh"
SCHEDULER = ROOT / "scripts" / "nightly_scheduler.py"
OPERATIONS = ROOT / "docs" / "OPERATIONS.md"
TRIO = {"torch", "torchrec", "fbgemm-gpu", "fbgemm-gpu-cpu"}


# ---- docker-compose.yml ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> source (volume name or host path), read-only marked with ':ro'."""
    out = {}
    for v in service.get("volumes", []):
        src, dst, *mode = v.split(":")
        out[dst] = src + (":ro" if mode == ["ro"] else "")
    return out


def _option(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_compose_services_volumes_and_healthcheck(compose: dict[str, Any]) -> None:
    services = _services(compose)
    assert set(services) == {"server", "scheduler", "nightly"}
    assert set(compose["volumes"]) == {"registry", "data", "nightly-runs"}

    server = services["server"]
    cmd = server["command"]
    assert cmd[0] == "serve" and "entrypoint" not in server  # the image's ENTRYPOINT: recsys-mtl
    assert _option(cmd, "--host") == "0.0.0.0" and _option(cmd, "--port") == "8000"
    # published on the host's loopback unless the operator chooses otherwise
    assert server["ports"] == ["${RECSYS_MTL_BIND:-127.0.0.1}:${RECSYS_MTL_PORT:-8000}:8000"]
    assert server["restart"] == "unless-stopped"
    assert "RECSYS_MTL_ADMIN_TOKEN" in server["environment"]
    health = server["healthcheck"]
    assert "/readyz" in " ".join(health["test"]) and health["test"][0] == "CMD"
    assert _mounts(server)[_option(cmd, "--registry")] == "registry:ro"

    # the scheduler loops; the nightly service runs once and only when asked (`docker compose run`)
    sched, nightly = services["scheduler"], services["nightly"]
    assert sched["restart"] == "unless-stopped" and "profiles" not in sched
    assert "--once" not in sched["entrypoint"]
    assert nightly["entrypoint"][-1] == "--once" and nightly["profiles"] and nightly["restart"] == "no"
    assert "NIGHTLY_DATE" in nightly["environment"] and "NIGHTLY_DATE" not in sched["environment"]
    for svc in (sched, nightly):
        assert svc["entrypoint"][:2] == ["python", "/app/scripts/nightly_scheduler.py"]
        command = svc["command"]
        assert command[:3] == ["--", "recsys-mtl", "nightly"] and "--date" not in command
        mounts = _mounts(svc)
        assert mounts[_option(command, "--registry")] == "registry"
        assert mounts[_option(command, "--data")] == "data"
        assert mounts[_option(command, "--work")] == "nightly-runs"
        assert Path(svc["environment"]["NIGHTLY_LOCK"]).parent == Path(_option(command, "--work"))
    # nothing needs the Docker socket
    assert "docker.sock" not in COMPOSE.read_text()


def test_compose_config_files_exist_in_the_image(compose: dict[str, Any]) -> None:
    """Paths under /app/configs the services name are files of configs/ (baked in and mounted)."""
    text = DOCKERFILE.read_text()
    assert re.search(r"^COPY configs configs$", text, re.M) and re.search(r"^WORKDIR /app$", text, re.M)
    named = re.findall(r"/app/configs/([\w.-]+)", COMPOSE.read_text())
    assert named
    for f in named:
        assert (ROOT / "configs" / f).is_file(), f
    assert re.search(r"^COPY scripts/nightly_scheduler.py scripts/nightly_scheduler.py$", text, re.M)


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[http.server.HTTPServer]:
    srv = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("status, healthy", [(200, True), (503, False)])
def test_compose_healthcheck_command(
    compose: dict[str, Any], health_server: http.server.HTTPServer, status: int, healthy: bool
) -> None:
    """The healthcheck's Python one-liner, pointed at a stand-in: 0 on 200, non-zero on 503."""
    _Health.status = status
    test = _services(compose)["server"]["healthcheck"]["test"][1:]
    assert test[0] == "python"
    port = health_server.server_address[1]
    cmd = [sys.executable, *(a.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for a in test[1:])]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert (r.returncode == 0) == healthy, r.stderr


def _commands_in(node: Any) -> Iterator[list[str]]:
    """Argument lists after "recsys-mtl" in any list of strings inside parsed YAML."""
    if isinstance(node, dict):
        for v in node.values():
            yield from _commands_in(v)
    elif isinstance(node, list):
        args = [str(a) for a in node]
        if "recsys-mtl" in args:
            yield args[args.index("recsys-mtl") + 1 :]
        for v in node:
            yield from _commands_in(v)


def _subcommand_uses() -> dict[str, set[str]]:
    """recsys-mtl subcommand -> the options the compose file and the docs' examples pass to it."""
    compose = yaml.safe_load(COMPOSE.read_text())
    invocations = list(_commands_in(compose))
    invocations += [svc["command"] for svc in compose["services"].values() if "entrypoint" not in svc]
    text = OPERATIONS.read_text()
    for block in re.findall(r"```yaml\n(.*?)```", text, re.S):
        for doc in yaml.safe_load_all(block):
            invocations += list(_commands_in(doc))
    # command lines in the shell / crontab / Python examples (continuation lines joined)
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        block = block.replace("\\\n", " ")
        for m in re.finditer(r"recsys-mtl ([a-z]+)((?: +--?[\w-]+(?:[ =](?!-)[^\s\\'\"`|;&>)]+)?)*)", block):
            invocations.append([m.group(1), *m.group(2).split()])
    uses: dict[str, set[str]] = {}
    for args in invocations:
        uses.setdefault(str(args[0]), set()).update(
            str(a).split("=")[0] for a in args[1:] if str(a).startswith("--")
        )
    return uses


def test_every_documented_subcommand_is_covered() -> None:
    uses = _subcommand_uses()
    assert {"serve", "nightly"} <= set(uses)


@pytest.mark.parametrize("sub", sorted(_subcommand_uses()))
def test_subcommands_and_options_exist(sub: str) -> None:
    """`recsys-mtl SUB --help` works and lists every option the compose file and docs use."""
    from recsys_mtl.cli import SUBCOMMANDS

    if sub == "nightly" and "nightly" not in SUBCOMMANDS:
        pytest.skip("`recsys-mtl nightly` is not in this checkout yet (issue #6 part 1)")
    r = subprocess.run([str(BIN), sub, "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for opt in sorted(_subcommand_uses()[sub]):
        assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", r.stdout), f"recsys-mtl {sub}: no {opt}"


def _compose_cli() -> list[str] | None:
    """`docker compose` (v2), else the standalone `docker-compose`, else None."""
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


@pytest.mark.skipif(_compose_cli() is None, reason="neither `docker compose` nor docker-compose is installed")
def test_docker_compose_config() -> None:
    """Compose's own validation (no Docker engine needed), with and without the manual profile."""
    cli = _compose_cli()
    assert cli is not None
    for profile in ([], ["--profile", "manual"]):
        r = subprocess.run(
            [*cli, "-f", str(COMPOSE), *profile, "config"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            env={k: v for k, v in os.environ.items() if not k.startswith(("NIGHTLY_", "RECSYS_MTL_"))},
        )
        assert r.returncode == 0, r.stderr
        resolved = yaml.safe_load(r.stdout)
        assert {"server", "scheduler"} <= set(resolved["services"])
        assert resolved["services"]["server"]["healthcheck"]["test"][0] == "CMD"


# ---- Dockerfile vs scripts/setup_venv.sh ----------------------------------------------------


def _dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comment lines dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or (not buf and not line.strip()):
            continue
        if line.endswith("\\"):
            buf += line[:-1]
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def _recorder(bin_dir: Path, name: str, log: Path) -> None:
    """An executable that appends its arguments (\\x1f-separated) to `log` and exits 0."""
    p = bin_dir / name
    p.write_text(
        f'#!/bin/sh\nfor a in "$@"; do printf "%s\\037" "$a"; done >> "{log}"\nprintf "\\n" >> "{log}"\n'
    )
    p.chmod(p.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _pip_installs(log: Path) -> list[list[str]]:
    """The argument lists of `pip install ...` calls in a recorder log (direct or `python -m pip`)."""
    calls = []
    for line in log.read_text().splitlines():
        args = line.split("\x1f")[:-1]
        if args[:2] == ["-m", "pip"]:
            args = args[2:]
        args = [a for a in args if a not in ("--disable-pip-version-check", "-q")]
        if args[:1] == ["install"]:
            calls.append(args[1:])
    return calls


def _trio(calls: list[list[str]]) -> dict[str, tuple[str, bool]]:
    """name -> (version pin, installed with --no-deps) of torch / torchrec / FBGEMM."""
    out: dict[str, tuple[str, bool]] = {}
    for args in calls:
        for a in args:
            name, _, version = a.partition("==")
            if name in TRIO:
                assert version, f"{name} installed without a pin: {args}"
                assert out.get(name, (version,))[0] == version, f"{name} pinned twice differently"
                out[name] = (version, out.get(name, (version, False))[1] or "--no-deps" in args)
    return out


def _setup_venv_installs(tmp: Path, fbgemm: str) -> list[list[str]]:
    """What scripts/setup_venv.sh asks pip for, with a stand-in venv python."""
    venv = tmp / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp / "setup.log"
    _recorder(venv / "bin", "python", log)
    env = {**os.environ, "VENV": str(venv), "RECSYS_MTL_FBGEMM": fbgemm}
    r = subprocess.run(["bash", str(SETUP_VENV)], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return _pip_installs(log)


def _dockerfile_installs(tmp: Path, fbgemm: str | None) -> list[list[str]]:
    """What the Dockerfile's build-stage RUN steps ask pip for, with stand-in pip and python."""
    bin_dir = tmp / "docker-bin"
    bin_dir.mkdir()
    log = tmp / "docker.log"
    for name in ("pip", "python"):
        _recorder(bin_dir, name, log)
    instructions = _dockerfile_instructions(DOCKERFILE.read_text())
    build_stage = instructions[: [i for i, (w, _) in enumerate(instructions) if w == "FROM"][1]]
    default = next(
        a.split("=", 1)[1] for w, a in build_stage if w == "ARG" and a.startswith("RECSYS_MTL_FBGEMM=")
    )
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RECSYS_MTL_FBGEMM": fbgemm or default}
    runs = [re.sub(r"^(--mount=\S+\s+)+", "", a) for w, a in build_stage if w == "RUN" and "pip install" in a]
    assert len(runs) >= 2, "expected the trio step and the package step"
    for body in runs:
        r = subprocess.run(["sh", "-c", body], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"{body}\n{r.stderr}"
    return _pip_installs(log)


@pytest.mark.parametrize("fbgemm", [None, "fbgemm-gpu-cpu", "fbgemm-gpu"])
def test_dockerfile_installs_the_pins_of_setup_venv(tmp_path: Path, fbgemm: str | None) -> None:
    """None: the Dockerfile's default build arg, which must be the CPU variant."""
    docker = _dockerfile_installs(tmp_path, fbgemm)
    script = _setup_venv_installs(tmp_path, fbgemm or "fbgemm-gpu-cpu")
    want = _trio(script)
    assert set(want) == {"torch", "torchrec", fbgemm or "fbgemm-gpu-cpu"}
    assert want["torchrec"][1], "setup_venv.sh installs torchrec with --no-deps"
    assert _trio(docker) == want
    # the package: a regular install without the dev extras (the script's is editable, with them)
    assert any("." in args and "-e" not in args for args in docker)
    assert not any(a.startswith(".[") or a == "-e" for args in docker for a in args)
    assert any(args[-2:] == ["-e", ".[dev]"] for args in script)


def test_dockerfile_image_settings() -> None:
    instructions = _dockerfile_instructions(DOCKERFILE.read_text())
    froms = [a for w, a in instructions if w == "FROM"]
    base = next(a.split("=", 1)[1] for w, a in instructions if w == "ARG" and a.startswith("PYTHON_IMAGE="))
    assert base == "python:3.11-slim" and all(f.startswith("${PYTHON_IMAGE}") for f in froms)
    final = instructions[[i for i, (w, _) in enumerate(instructions) if w == "FROM"][-1] :]
    users = [a for w, a in final if w == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert ("ENTRYPOINT", '["recsys-mtl"]') in final
    assert ("ARG", "RECSYS_MTL_FBGEMM=fbgemm-gpu-cpu") in instructions


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for entry in (".venv/", ".git/", "demo-out/", "bench/out/", ".pytest_cache/", ".ruff_cache/"):
        assert entry in ignored
    # and keeps what the Dockerfile copies
    for w, a in _dockerfile_instructions(DOCKERFILE.read_text()):
        if w == "COPY" and not a.startswith("--from"):
            for src in a.split()[:-1]:
                assert f"{src}/" not in ignored and src not in ignored, src


# ---- scripts/nightly_scheduler.py --------------------------------------------------------------


def scheduler(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NIGHTLY_")}
    return subprocess.run(
        [sys.executable, str(SCHEDULER), *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


ECHO_EXIT = ["sh", "-c", 'echo "job args: $*"; exit "${RC:-0}"', "job"]


@pytest.mark.parametrize(
    "now, date",
    [
        ("2024-03-01T00:10:00Z", "2024-02-29"),  # leap day
        ("2026-01-01T00:00:00Z", "2025-12-31"),  # year boundary
        ("2026-01-01T01:00:00+02:00", "2025-12-30"),  # 2025-12-31T23:00 UTC: yesterday in UTC
        ("2026-06-15T23:59:59Z", "2026-06-14"),
    ],
)
def test_scheduler_once_runs_for_yesterday_utc(now: str, date: str) -> None:
    r = scheduler("--once", "--", *ECHO_EXIT, env={"NIGHTLY_NOW": now})
    assert r.returncode == 0, r.stderr
    assert f"job args: --date {date}\n" in r.stdout
    assert f"INFO date={date} rc=0 outcome=ok" in r.stdout


def test_scheduler_once_uses_the_real_clock() -> None:
    before = dt.datetime.now(dt.UTC).date()
    r = scheduler("--once", "--", *ECHO_EXIT)
    after = dt.datetime.now(dt.UTC).date()
    got = re.search(r"job args: --date (\S+)", r.stdout)
    assert got and dt.date.fromisoformat(got.group(1)) in {before - dt.timedelta(1), after - dt.timedelta(1)}


@pytest.mark.parametrize(
    "rc, level, outcome",
    [
        (0, "INFO", "ok"),
        (1, "ERROR", "internal_error"),
        (2, "ERROR", "bad_config"),
        (3, "WARNING", "data_invalid"),
        (4, "WARNING", "gate_failed"),
        (5, "WARNING", "promote_conflict"),
        (9, "ERROR", "unexpected"),
    ],
)
def test_scheduler_reports_exit_codes(rc: int, level: str, outcome: str) -> None:
    r = scheduler("--once", "--date", "2026-01-07", "--", *ECHO_EXIT, env={"RC": str(rc)})
    assert r.returncode == rc
    assert re.search(rf" {level} date=2026-01-07 rc={rc} outcome={outcome} took=\d+s: \S", r.stdout), r.stdout


def test_scheduler_reports_a_killed_job_and_a_missing_command() -> None:
    r = scheduler("--once", "--", "sh", "-c", "kill -KILL $$")
    assert r.returncode == 137 and "rc=137 outcome=killed" in r.stdout and "SIGKILL" in r.stdout
    r = scheduler("--once", "--", "/nonexistent/recsys-mtl", "nightly")
    assert r.returncode == 127 and "outcome=not_found" in r.stdout


def test_scheduler_date_and_extra_args_from_the_environment() -> None:
    env = {"NIGHTLY_DATE": "2026-01-05", "NIGHTLY_EXTRA_ARGS": "--force --nproc 2"}
    r = scheduler("--once", "--", *ECHO_EXIT, env=env)
    assert r.returncode == 0 and "job args: --force --nproc 2 --date 2026-01-05\n" in r.stdout
    r = scheduler("--once", "--date", "2026-01-06", "--", *ECHO_EXIT, env=env)  # the flag wins
    assert "job args: --force --nproc 2 --date 2026-01-06\n" in r.stdout
    r = scheduler("--once", "--", *ECHO_EXIT, env={"NIGHTLY_DATE": ""})  # compose passes "" when unset
    assert r.returncode == 0 and "job args: --date " in r.stdout


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--once", "--", "recsys-mtl", "nightly", "--date", "2026-01-01"], {}, "must not contain --date"),
        (["--date", "2026-01-01", "--", "true"], {}, "only go with --once"),
        (["--", "true"], {"NIGHTLY_DATE": "2026-01-01"}, "only go with --once"),
        (["--once", "--at", "24:00", "--", "true"], {}, "expected HH:MM"),
        (["--once", "--date", "2026-13-01", "--", "true"], {}, "expected a date"),
        (["--once"], {}, "no command"),
    ],
)
def test_scheduler_refuses_bad_arguments(args: list[str], env: dict[str, str], message: str) -> None:
    r = scheduler(*args, env=env)
    assert r.returncode == 2 and message in r.stderr


@pytest.mark.parametrize(
    "now, at, expected",
    [
        ("2026-01-08T01:00:00Z", "02:30", "2026-01-08T02:30:00Z 2026-01-07"),
        ("2026-01-08T02:30:00Z", "02:30", "2026-01-09T02:30:00Z 2026-01-08"),  # strictly after now
        ("2026-01-08T23:59:00Z", "00:00", "2026-01-09T00:00:00Z 2026-01-08"),
        ("2026-02-28T12:00:00Z", "6:05", "2026-03-01T06:05:00Z 2026-02-28"),
    ],
)
def test_scheduler_next_run(now: str, at: str, expected: str) -> None:
    r = scheduler("--print-next", "--at", at, env={"NIGHTLY_NOW": now})
    assert r.returncode == 0 and r.stdout.strip() == expected
    r = scheduler("--print-next", env={"NIGHTLY_NOW": now, "NIGHTLY_AT": at})
    assert r.stdout.strip() == expected


def test_scheduler_once_gives_up_when_the_lock_is_held(tmp_path: Path) -> None:
    lock = tmp_path / "runs" / ".nightly.lock"
    lock.parent.mkdir()
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        r = scheduler("--once", "--", *ECHO_EXIT, env={"NIGHTLY_LOCK": str(lock)})
        assert r.returncode == 75 and "outcome=locked" in r.stdout and "job args" not in r.stdout
    r = scheduler("--once", "--lock", str(lock), "--", *ECHO_EXIT)
    assert r.returncode == 0 and "job args" in r.stdout


def _start(args: list[str], out: Path) -> subprocess.Popen[bytes]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NIGHTLY_")}
    with open(out, "wb") as f:
        return subprocess.Popen(
            [sys.executable, str(SCHEDULER), *args], stdout=f, stderr=subprocess.STDOUT, env=clean
        )


def _wait_for(out: Path, text: str, timeout: float = 20) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = out.read_text()
        if text in got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the scheduler's output:\n{out.read_text()}")


def test_scheduler_loop_catches_up_then_sleeps_and_stops_on_sigterm(tmp_path: Path) -> None:
    """--at 00:00 has always passed today: the loop runs for yesterday at once, then sleeps until
    tomorrow 00:00; SIGTERM while it sleeps ends it cleanly (exit 0)."""
    out = tmp_path / "out.txt"
    today = dt.datetime.now(dt.UTC).date()
    p = _start(["--at", "00:00", "--", *ECHO_EXIT], out)
    try:
        text = _wait_for(out, "next run at ")
        assert f"job args: --date {today - dt.timedelta(days=1)}\n" in text
        assert f"next run at {today + dt.timedelta(days=1)}T00:00:00Z for date={today}" in text
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=10) == 0
    finally:
        p.kill()
    assert "stopped by SIGTERM" in out.read_text()


def test_scheduler_loop_without_catch_up(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    p = _start(["--at", "00:00", "--no-catch-up", "--", *ECHO_EXIT], out)
    try:
        text = _wait_for(out, "next run at ")
        assert "job args: --date" not in text
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=10) == 0
    finally:
        p.kill()


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_scheduler_forwards_sigterm_to_the_whole_job(tmp_path: Path) -> None:
    """A `docker stop` during a run stops the job and its children (training ranks), and the
    scheduler exits 128 + 15, so the run resumes from its checkpoint next time."""
    out, pid_file = tmp_path / "out.txt", tmp_path / "child.pid"
    job = f"sleep 60 & echo $! > {shlex.quote(str(pid_file))}; wait"
    p = _start(["--once", "--", "sh", "-c", job], out)
    try:
        deadline = time.time() + 20
        while not (pid_file.exists() and pid_file.read_text().strip()) and time.time() < deadline:
            time.sleep(0.05)
        grandchild = int(pid_file.read_text())
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=10) == 143
    finally:
        p.kill()
    deadline = time.time() + 5
    while not _gone(grandchild) and time.time() < deadline:
        time.sleep(0.05)
    assert _gone(grandchild)
    text = out.read_text()
    assert "got SIGTERM: stopping the running job" in text and "rc=143 outcome=killed" in text


# ---- docs/OPERATIONS.md ----------------------------------------------------------------------


def test_operations_names_every_metric() -> None:
    from serving.metrics import ServingMetrics

    # exposition names: prometheus_client reports counters without their `_total` suffix
    names = {m.name + ("_total" if m.type == "counter" else "") for m in ServingMetrics().registry.collect()}
    text = OPERATIONS.read_text()
    missing = sorted(n for n in names if n not in text)
    assert not missing, f"docs/OPERATIONS.md does not describe {missing}"


def _code_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", OPERATIONS.read_text(), re.S)


def test_operations_rollback_one_liner_works(tmp_path: Path) -> None:
    """The documented `recsys-mtl rollback` lines, run in order against a registry with versions
    1-4 (promoted in turn, 4 current): --list changes nothing, the plain one goes back to 3 and
    records 4 as rolled back, --to 2 goes to 2."""
    reg = Registry(tmp_path / "registry")
    for _ in range(4):
        v = reg.publish("ads_ranker", {"model.pt": b"x"}, {"created_at": "now"})
        reg.promote("ads_ranker", v)
    lines = [
        line.split("#")[0].strip()
        for block in _code_blocks("bash")
        for line in block.splitlines()
        if line.strip().startswith(".venv/bin/recsys-mtl rollback")
    ]
    assert len(lines) == 3, f"expected the three `.venv/bin/recsys-mtl rollback` lines, got {lines}"
    expected = [("4", set()), ("3", {"4"}), ("2", {"3", "4"})]
    for line, (current, rolled_back) in zip(lines, expected, strict=True):
        cmd = shlex.split(line)
        cmd[0] = str(BIN)
        r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, (line, r.stderr)
        assert reg.current("ads_ranker") == current, line
        assert set(reg.rolled_back("ads_ranker")) == rolled_back, line


def test_operations_examples_parse() -> None:
    """The Kubernetes manifests are YAML with the settings the text promises; the DAG is Python."""
    docs = [d for block in _code_blocks("yaml") for d in yaml.safe_load_all(block) if d]
    cron = next(d for d in docs if d.get("kind") == "CronJob")
    spec = cron["spec"]
    assert spec["concurrencyPolicy"] == "Forbid" and spec["timeZone"] in ("Etc/UTC", "UTC")
    job = spec["jobTemplate"]["spec"]
    rules = job["podFailurePolicy"]["rules"]
    assert any(r["action"] == "FailJob" and set(r["onExitCodes"]["values"]) == {2, 3, 4} for r in rules)
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    assert any(d.get("kind") == "PersistentVolumeClaim" for d in docs)
    dags = [b for b in _code_blocks("python") if "DAG" in b or "@dag" in b]
    assert dags
    for block in dags:
        compile(block, "docs/OPERATIONS.md", "exec")
