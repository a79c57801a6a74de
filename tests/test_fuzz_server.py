"""Property-based fuzzing of `POST /score` on a REAL `recsys-mtl serve` process (issue 12).

Hypothesis draws request bodies inside and outside the request schema (tests/fuzz/:
valid and perturbed JSON, JSON broken at the byte level, valid and mutated Arrow IPC streams, bad
offsets, random schemas, compression bombs, header and size variants, broken vectors in JSON and
Arrow) and sends each one to one
server, started once for the module on a small real model in a real registry. Every answer must
keep the contract of the scoring edge:

- a 2xx, or a 4xx whose body is JSON `{"error": {"field": <non-empty string>, "message": <string>}}`
  with `Content-Type: application/json`; the 4xx allowed are 400, 403, 406, 408, 413, 415 and 422.
  A 503 is only allowed with `Retry-After` under overload, which one request at a time on an idle
  server never is: here every 503 fails, as does any other 5xx, or no answer within the timeout;
- a 2xx JSON body has, for every task in `scores`, `num_candidates` finite floats in [0, 1] (an
  Arrow body: every binary task column), `num_candidates` is one the request could mean, and the
  body's media type is not one the Accept header refuses (q=0);
- a valid request is scored (200), a body over `max_body_bytes` gets 413, also a compressed Arrow
  body whose inflated size is over it; a request whose only fault is one broken vector column gets
  a 422 naming that column;
- the process stays alive and `GET /readyz` answers 200: checked every `HEALTH_EVERY` requests and
  after each test. A crashed server is restarted (its log kept) so one crash fails one example.

A violation is raised as a `ContractViolation` subclass named after its class (status, and for a
5xx the exception and the server frame from the server log; for a crash the frame faulthandler
wrote), so Hypothesis reports each distinct failure with its own example. The smallest case of each
class is saved (body + headers) for a replay; the message says where.

Examples: `RECSYS_MTL_FUZZ_EXAMPLES` in total over the tests (default 500, the test suite's bounded
run, no shrinking: a failure is reported as found); `make fuzz` runs 20,000, shrinks failures
(`RECSYS_MTL_FUZZ_SHRINK=1`) and writes the counts to bench/out/fuzz.json
(`RECSYS_MTL_FUZZ_REPORT`). Runs are derandomized (the same examples every time) and keep no
example database.
"""

from __future__ import annotations

import math
import os
import re
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from recsys_mtl.loader import load_model
from recsys_mtl.recipe import Recipe
from serving.request import ARROW_STREAM, JSON
from tests import fuzz as fs
from tests.serving_support import NAME, Server, publish, serve, small_recipe, write_config

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = int(os.environ.get("RECSYS_MTL_FUZZ_EXAMPLES", "500"))  # in total, over all the tests
TIMEOUT_S = float(os.environ.get("RECSYS_MTL_FUZZ_TIMEOUT", "30"))  # no answer by then: a stall
REPORT = os.environ.get("RECSYS_MTL_FUZZ_REPORT")  # a JSON file for the counts (make fuzz)
# Shrinking a failure to a minimal example sends hundreds more requests (a crash: a restart each);
# CI reports the failing example as found, `make fuzz` shrinks.
SHRINK = os.environ.get("RECSYS_MTL_FUZZ_SHRINK", "0") == "1"
HEALTH_EVERY = 50  # requests between two liveness checks
MAX_CANDIDATES = 64  # small, so generators reach the limit cheaply
MAX_BODY_BYTES = 4 * 1024 * 1024
TOKEN = "fuzz-token"
ALLOWED_4XX = frozenset({400, 403, 406, 408, 413, 415, 422})

# each generator's share of EXAMPLES (bombs and size tests are the costly ones)
WEIGHTS = {
    "json.valid": 0.05,
    "arrow.valid": 0.05,
    "json.perturbed": 0.22,
    "json.raw": 0.10,
    "json.vector": 0.03,
    "arrow.vector": 0.03,
    "arrow.bytes": 0.12,
    "arrow.offsets": 0.10,
    "arrow.schema": 0.13,
    "arrow.bomb": 0.02,
    "headers": 0.10,
    "size": 0.05,
}
assert set(WEIGHTS) == set(fs.GENERATORS)


def fuzz_settings(generator: str) -> settings:
    """Deterministic settings: `generator`'s share of the examples, no deadline, no database."""
    return settings(
        max_examples=max(4, round(EXAMPLES * WEIGHTS[generator])),
        deadline=None,
        derandomize=True,
        phases=list(Phase) if SHRINK else [p for p in Phase if p not in (Phase.shrink, Phase.explain)],
        database=None,
        print_blob=False,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
            HealthCheck.filter_too_much,
        ],
    )


# ---------------------------------------------------------------------------------------------
# violations: one exception class per failure class, so Hypothesis keeps them apart
# ---------------------------------------------------------------------------------------------


class ContractViolation(AssertionError):
    """An answer (or a silence) that breaks the scoring edge's contract."""


_CLASSES: dict[str, type[ContractViolation]] = {}


def violation(kind: str, detail: str) -> ContractViolation:
    """A ContractViolation of the subclass for `kind` (one class per kind, created once)."""
    if kind not in _CLASSES:
        name = "Violation_" + re.sub(r"\W+", "_", kind).strip("_")[:100]
        _CLASSES[kind] = type(name, (ContractViolation,), {})
    return _CLASSES[kind](f"{kind}\n{detail}")


_FRAME = re.compile(r'File "([^"]+)", line (\d+),? in (\S+)')  # a traceback's or faulthandler's


def _where(frames: list[tuple[str, str, str]]) -> str:
    """ " at path:line in func" of the first frame in this repository (else the first frame)."""
    ours = [f for f in frames if f[0].startswith(str(ROOT)) and "/.venv/" not in f[0]]
    if not (ours or frames):
        return ""
    path, line, func = (ours or frames)[0]
    return f" at {os.path.relpath(path, ROOT) if ours else path}:{line} in {func}"


def last_traceback(log: str) -> tuple[str, str] | None:
    """(signature, text) of the last traceback in a server log excerpt: the exception type and the
    deepest frame in this repository, e.g. "OverflowError at serving/request.py:241 in _to_array"."""
    if "Traceback (most recent call last):" not in log:
        return None
    lines = log.rsplit("Traceback (most recent call last):", 1)[1].splitlines()
    if not lines:
        return None
    end = next((i for i, ln in enumerate(lines) if ln and not ln.startswith((" ", "\t"))), len(lines) - 1)
    tb = "\n".join(lines[: end + 1])  # the frames, then the exception line
    where = _where(_FRAME.findall(tb)[::-1])
    return f"{lines[end].split(':', 1)[0]}{where}", "Traceback (most recent call last):" + tb[-4000:]


def crash_site(log: str) -> str:
    """Where a crashed server was (the faulthandler dump of the crashing thread, most recent
    call first), e.g. " at recsys_mtl/transform.py:277 in _rows"; empty when the log has none."""
    if "Current thread" not in log:
        return ""
    return _where(_FRAME.findall(log.split("Current thread", 1)[1].split("\n\n", 1)[0]))


def media_type(content_type: str | None) -> str:
    """ "application/json" of "Application/JSON; charset=utf-8"."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def refused_by_accept(accept: str | None, media: str) -> bool:
    """Whether an Accept header explicitly refuses `media` (its most specific matching range has
    q=0). An Accept header that does not parse refuses nothing (a server may ignore it)."""
    if not accept or not accept.strip():
        return False
    best: tuple[int, float] | None = None
    main = media.partition("/")[0]
    for part in accept.split(","):
        params = [p.strip() for p in part.split(";")]
        rng = params[0].lower()
        if not rng:
            continue
        if rng.count("/") != 1:
            return False
        q = 1.0
        for p in params[1:]:
            k, _, v = p.partition("=")
            if k.strip().lower() == "q":
                try:
                    q = float(v.strip())
                except ValueError:
                    return False
                if not 0.0 <= q <= 1.0:
                    return False
        r_main, _, r_sub = rng.partition("/")
        if rng == media:
            spec = 3
        elif r_main == main and r_sub == "*":
            spec = 2
        elif rng == "*/*":
            spec = 1
        else:
            continue
        if best is None or spec > best[0]:
            best = (spec, q)
    return best is not None and best[1] == 0.0


def scores_problem(values: Any, n: int, where: str) -> tuple[str, str] | None:
    """(what, detail) when `values` is not `n` finite numbers in [0, 1]."""
    if not isinstance(values, list) or len(values) != n:
        return "a scores list is not num_candidates long", f"{where} for {n} candidates: {str(values)[:200]}"
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int | float):
            return "a score is not a number", f"{where}[{i}] = {v!r}"
        if not math.isfinite(v):
            return "a score is not finite", f"{where}[{i}] = {v!r}"
        if not 0.0 <= v <= 1.0:
            return "a score is outside [0, 1]", f"{where}[{i}] = {v!r}"
    return None


def check_success(case: fs.Case, resp: httpx.Response, shape: fs.ModelShape) -> tuple[str, str] | None:
    """The body of a 2xx: (kind, detail) of the first problem, None when it keeps the contract."""
    ctype = media_type(resp.headers.get("content-type"))
    status = resp.status_code
    if ctype == JSON:
        try:
            out = orjson.loads(resp.content)
        except orjson.JSONDecodeError as e:
            return f"HTTP {status}: JSON body does not parse", f"{e}: {resp.content[:300]!r}"
        if not isinstance(out, dict) or not isinstance(out.get("scores"), dict):
            return f"HTTP {status}: no `scores` object", resp.text[:300]
        n = out.get("num_candidates")
        scores: dict[str, list[Any]] = out["scores"]
    elif ctype == ARROW_STREAM:
        try:
            table = pa.ipc.open_stream(resp.content).read_all()
        except pa.ArrowException as e:
            return f"HTTP {status}: Arrow body does not parse", str(e)
        n = table.num_rows
        scores = {t: table.column(t).to_pylist() for t in shape.binary_tasks if t in table.column_names}
    else:
        return f"HTTP {status} with content-type {ctype!r}", resp.text[:300]
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= shape.max_candidates:
        return f"HTTP {status}: num_candidates is not 1..max_candidates", f"num_candidates={n!r}"
    if case.candidates is not None and n not in case.candidates:
        return (
            f"HTTP {status}: num_candidates is not the request's",
            f"num_candidates={n}, the request has {sorted(case.candidates)}",
        )
    for task, values in scores.items():
        problem = scores_problem(values, n, f"scores[{task!r}]")
        if problem:
            return f"HTTP {status}: {problem[0]}", problem[1]
    if refused_by_accept(case.headers.get("accept"), ctype):
        return f"HTTP {status} in {ctype}, which the Accept header refuses (q=0)", str(case.headers)
    return None


def check_error(resp: httpx.Response) -> tuple[str, str] | None:
    """A 4xx body: JSON {"error": {"field": non-empty string, "message": string}}."""
    status = resp.status_code
    ctype = media_type(resp.headers.get("content-type"))
    if ctype != JSON:
        return f"HTTP {status} error with content-type {ctype!r}", resp.text[:300]
    try:
        body = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        return f"HTTP {status} error body is not JSON", resp.text[:300]
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return f"HTTP {status} error body has no `error` object", resp.text[:300]
    f = err.get("field")
    if not isinstance(f, str) or not f:
        return f"HTTP {status} error.field is {type(f).__name__} {f!r}, not a non-empty string", resp.text[
            :300
        ]
    if not isinstance(err.get("message"), str):
        return f"HTTP {status} error.message is not a string", resp.text[:300]
    return None


def error_field(resp: httpx.Response) -> str | None:
    try:
        return str(orjson.loads(resp.content)["error"]["field"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None


def check_response(case: fs.Case, resp: httpx.Response, shape: fs.ModelShape) -> tuple[str, str] | None:
    """The first way `resp` breaks the contract for `case`, as (kind, detail); None if it keeps it."""
    status = resp.status_code
    if case.expect is not None and status not in case.expect:
        want = "/".join(map(str, sorted(case.expect)))
        got = f"{status} ({error_field(resp)})" if 400 <= status < 500 else str(status)
        return f"{case.generator}: expected HTTP {want}, got {got}", resp.text[:500]
    if case.error_field is not None and 400 <= status < 500 and error_field(resp) != case.error_field:
        return (
            f"{case.generator}: HTTP {status} names {error_field(resp)!r}, not {case.error_field!r}",
            resp.text[:500],
        )
    if 200 <= status < 300:
        return check_success(case, resp, shape)
    if status in ALLOWED_4XX:
        return check_error(resp)
    if status == 503:
        retry = resp.headers.get("retry-after")
        return f"HTTP 503 to one request on an idle server (Retry-After: {retry})", resp.text[:300]
    return f"HTTP {status}", resp.text[:300]


# ---------------------------------------------------------------------------------------------
# the server and the client
# ---------------------------------------------------------------------------------------------


@dataclass
class Seen:
    """A failure class: how often, and the smallest case that showed it."""

    count: int = 0
    smallest: str = ""
    size: int = -1
    server_error: str = ""
    saved: str = ""  # the smallest case's body and headers, to replay it


@dataclass(repr=False)
class Fuzzer:
    """One `recsys-mtl serve` process and an httpx client; sends cases, checks the answers, counts."""

    root: Path
    registry: Path
    config: Path
    shape: fs.ModelShape
    server: Server | None = None
    client: httpx.Client | None = None
    logs: list[Path] = field(default_factory=list)
    sent: int = 0
    restarts: int = 0
    by_generator: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    violations: dict[str, Seen] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    _stack: ExitStack | None = None
    _log_offset: int = 0
    _stalled: bool = False

    def __repr__(self) -> str:
        return f"Fuzzer({self.server.url if self.server else 'stopped'}, {self.sent} requests)"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # Hypothesis prints dataclasses field by field
        p.text(repr(self))

    def start(self) -> None:
        log = self.root / f"server-{len(self.logs)}.log"
        self.logs.append(log)
        self._log_offset = log.stat().st_size if log.exists() else 0  # the server appends
        self._stack = ExitStack()
        self.server = self._stack.enter_context(serve(self.registry, self.config, log, token=TOKEN))
        self.client = httpx.Client(base_url=self.server.url, timeout=TIMEOUT_S)
        self._stalled = False

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.server is not None and self._stalled and self.server.proc.poll() is None:
            self.server.proc.kill()  # it stopped answering: no graceful drain to wait for
        if self._stack is not None:
            self._stack.close()
        self.server = self.client = self._stack = None

    def ensure_up(self) -> None:
        """Restart the server if it died or stalled (the failure was reported where it happened)."""
        assert self.server is not None
        if self.server.proc.poll() is None and not self._stalled:
            return
        self.restarts += 1
        self.stop()
        self.start()

    def new_log(self) -> str:
        assert self.server is not None
        with open(self.server.log_path, "rb") as f:
            f.seek(self._log_offset)
            text = f.read()
        self._log_offset += len(text)
        return text.decode(errors="replace")

    def _fail(
        self, case: fs.Case | None, kind: str, detail: str, server_error: str = ""
    ) -> ContractViolation:
        seen = self.violations.setdefault(kind, Seen())
        seen.count += 1
        size = len(case.body) if case is not None else 0
        if case is not None and (seen.size < 0 or size < seen.size):
            seen.smallest, seen.size, seen.server_error = case.describe(), size, server_error
            seen.saved = str(self.save(kind, case))
        assert self.server is not None
        where = f"server log: {self.server.log_path}; smallest case so far: {seen.saved}.*"
        return violation(kind, f"{detail}\n{case.describe() if case else ''}\n{server_error}\n{where}")

    def save(self, kind: str, case: fs.Case) -> Path:
        """The case as <kind>.body plus .json (headers, how it was made) in fuzz-failures/ next to
        the report (else in the module's temporary folder), to replay it with
        httpx.post(url + "/score", content=body, headers=headers)."""
        folder = Path(REPORT).parent / "fuzz-failures" if REPORT else self.root / "failures"
        folder.mkdir(parents=True, exist_ok=True)
        stem = folder / re.sub(r"\W+", "_", kind).strip("_")[:120]
        stem.with_suffix(".body").write_bytes(case.body)
        about = {"kind": kind, "headers": case.headers, "chunked": case.chunked, "how": case.describe(0)}
        stem.with_suffix(".json").write_bytes(orjson.dumps(about, option=orjson.OPT_INDENT_2))
        return stem

    def _died(self, case: fs.Case | None) -> ContractViolation:
        assert self.server is not None
        code = self.server.proc.wait(5)
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        log = self.new_log()
        self.by_generator[case.generator if case else "-"]["died"] += 1
        return self._fail(case, f"the server died ({how}){crash_site(log)}", "", log[-4000:])

    def send(self, case: fs.Case) -> httpx.Response:
        """POST the case to /score and check the answer against the contract (raises on a violation)."""
        self.ensure_up()
        assert self.server is not None and self.client is not None
        content: Any = fs.chunks(case.body) if case.chunked else case.body
        counts = self.by_generator[case.generator]
        try:
            resp = self.client.post("/score", content=content, headers=case.headers)
        except httpx.TimeoutException:
            counts["timeout"] += 1
            self._stalled = not self._ready(timeout=10)
            raise self._fail(case, "no answer within the timeout", f"{TIMEOUT_S:.0f} s") from None
        except httpx.TransportError as e:
            time.sleep(0.5)
            if self.server.proc.poll() is not None:
                raise self._died(case) from None
            counts[type(e).__name__] += 1
            raise self._fail(case, f"no HTTP answer ({type(e).__name__})", str(e), self.new_log()) from None
        counts[str(resp.status_code)] += 1
        self.sent += 1
        problem = check_response(case, resp, self.shape)
        log = self.new_log()
        if problem is not None:
            kind, detail = problem
            tb = last_traceback(log)
            if resp.status_code >= 500 and tb is not None:
                kind = f"{kind}: {tb[0]}"
            raise self._fail(case, kind, detail, tb[1] if tb else log[-2000:])
        if self.sent % HEALTH_EVERY == 0:
            self.check_health()
        return resp

    def _ready(self, timeout: float) -> bool:
        assert self.client is not None
        try:
            return self.client.get("/readyz", timeout=timeout).status_code == 200
        except httpx.TransportError:
            return False

    def check_health(self) -> None:
        """The process is alive and GET /readyz answers 200."""
        assert self.server is not None and self.client is not None
        if self.server.proc.poll() is not None:
            raise self._died(None)
        try:
            resp = self.client.get("/readyz")
        except httpx.TransportError as e:
            self._stalled = True
            raise self._fail(None, f"GET /readyz: no answer ({type(e).__name__})", str(e)) from None
        if resp.status_code != 200:
            raise self._fail(None, f"GET /readyz answered {resp.status_code}", resp.text[:300])

    def summary(self) -> dict[str, Any]:
        return {
            "examples_setting": EXAMPLES,
            "requests": self.sent,
            "seconds": round(time.time() - self.started_at, 1),
            "server_restarts": self.restarts,
            "server_logs": [str(p) for p in self.logs],
            "by_generator": {g: dict(sorted(c.items())) for g, c in sorted(self.by_generator.items())},
            "violations": {
                k: {
                    "count": s.count,
                    "smallest": s.smallest,
                    "saved": s.saved,
                    "server_error": s.server_error[-1500:],
                }
                for k, s in sorted(self.violations.items(), key=lambda kv: -kv[1].count)
            },
        }


def print_summary(summary: dict[str, Any]) -> None:
    """Requests per generator by status code, then the failure classes seen."""
    labels = sorted({s for c in summary["by_generator"].values() for s in c})
    print(
        f"\nfuzz: {summary['requests']} answered requests in {summary['seconds']} s, "
        f"{summary['server_restarts']} server restarts (RECSYS_MTL_FUZZ_EXAMPLES={EXAMPLES})"
    )
    print(f"{'generator':<16}{'total':>7}" + "".join(f"{s:>9}" for s in labels))
    for g, c in summary["by_generator"].items():
        print(f"{g:<16}{sum(c.values()):>7}" + "".join(f"{c.get(s, 0):>9}" for s in labels))
    for kind, v in summary["violations"].items():
        print(f"violation x{v['count']}: {kind}\n  smallest: {v['smallest'][:400]}")


@pytest.fixture(scope="module")
def fuzz(recipe: Recipe, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzer]:
    root = tmp_path_factory.mktemp("fuzz")
    publish(root / "registry", small_recipe(recipe), seed=1, int8_companion=True)
    runtime = {
        "torch_threads": 1,
        "reload_interval_s": 5.0,
        "warm_up_batch_sizes": [1, MAX_CANDIDATES],
        "max_candidates": MAX_CANDIDATES,
        "max_body_bytes": MAX_BODY_BYTES,
    }
    variants = [
        {"name": "control", "weight": 1, "model": NAME},
        {"name": "int8", "weight": 1, "model": NAME, "int8": True, "survival_curves": True},
    ]
    config = write_config(
        root / "serving.yaml",
        runtime=runtime,
        experiments=[{"name": "exp", "salt": "s", "variants": variants}],
    )
    model = load_model(root / "registry", NAME)
    fz = Fuzzer(root, root / "registry", config, fs.ModelShape.of(model, MAX_CANDIDATES, MAX_BODY_BYTES))
    env = pytest.MonkeyPatch()
    env.setenv("PYTHONFAULTHANDLER", "1")  # a crashing server writes its threads' stacks to its log
    fz.start()
    try:
        yield fz
    finally:
        fz.stop()
        env.undo()
        summary = fz.summary()
        print_summary(summary)
        if REPORT:
            Path(REPORT).parent.mkdir(parents=True, exist_ok=True)
            Path(REPORT).write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
            print(f"fuzz: counts written to {REPORT}")


@pytest.fixture(autouse=True)
def _alive_after_each_test(fuzz: Fuzzer) -> Iterator[None]:
    fuzz.ensure_up()
    yield
    fuzz.check_health()


# ---------------------------------------------------------------------------------------------
# the properties
# ---------------------------------------------------------------------------------------------


def property_test(generator: str, doc: str) -> Callable[..., None]:
    """A test that sends `generator`'s cases to the server, its share of the examples each run.
    (Named per generator before Hypothesis sees it: derandomized runs seed from the name.)"""

    def test(fuzz: Fuzzer, data: st.DataObject) -> None:
        fuzz.send(data.draw(fs.GENERATORS[generator](fuzz.shape), label="case"))

    test.__name__ = test.__qualname__ = "test_" + generator.replace(".", "_")
    test.__doc__ = doc
    return fuzz_settings(generator)(given(data=st.data())(test))


test_json_valid = property_test("json.valid", "Valid JSON (columnar or rows) gets 200 and sane scores.")
test_arrow_valid = property_test(
    "arrow.valid", "Valid Arrow streams (plain, compressed, several batches) get 200 and sane scores."
)
test_json_perturbed = property_test(
    "json.perturbed", "Valid JSON with values and fields edited: a 2xx with sane scores or a well-formed 4xx."
)
test_json_raw = property_test(
    "json.raw", "JSON broken at the byte level (repeated keys, truncation, encodings, nesting, random bytes)."
)
test_json_vector = property_test(
    "json.vector", "One candidate's vector broken in valid JSON: a 422 naming the column (400: 1e400, NaN)."
)
test_arrow_vector = property_test(
    "arrow.vector",
    "A vector column of a wrong type, size or value in a valid Arrow request: a 422 naming it.",
)
test_arrow_bytes = property_test(
    "arrow.bytes", "Arrow streams with bytes overwritten and declared lengths, counts and sizes rewritten."
)
test_arrow_offsets = property_test(
    "arrow.offsets", "Arrow list and string offsets that are non-monotonic, negative or past the data."
)
test_arrow_schema = property_test(
    "arrow.schema", "Arrow streams with random column names, types, metadata and batch counts."
)
test_arrow_bomb = property_test(
    "arrow.bomb", "A small compressed body that inflates past max_body_bytes is refused as too large (413)."
)
test_headers = property_test(
    "headers", "Content-Type and Accept variants (q-values, wildcards, garbage) around valid bodies."
)
test_size = property_test(
    "size", "Bodies just under max_body_bytes are scored, just over it get 413 (also chunked)."
)
