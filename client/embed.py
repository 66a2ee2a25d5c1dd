"""The `embed` command: a folder's files through the server into the output file.

One task reads the candidates in order (in a thread: reading and hashing block), skips those stored with the same
sha256 by an earlier run, and cuts the others into batches; `concurrency` tasks send the batches. The queue between
them holds at most `concurrency` batches, so that at most about 2·concurrency·batch_size files are in memory, however
large the folder.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path

from tqdm import tqdm

from client.files import Candidate, Problem, Unsupported, read, walk
from client.store import Row, Store
from client.upload import BatchClient, RequestFailed, RetryPolicy

# Batches in a row that failed after all their retries: the server is down, and the rest would fail the same way,
# slowly.
ABORT_AFTER_FAILED_BATCHES = 8


@dataclass(frozen=True)
class EmbedOptions:
    folder: Path
    server: str
    out: Path
    batch_size: int
    concurrency: int
    max_text_bytes: int
    api_key: str | None
    retries: int
    timeout: float


@dataclass
class Report:
    embedded: Counter[str] = field(default_factory=Counter)
    """New vectors, by type."""
    already: int = 0
    """Files skipped because the output holds them with the same sha256."""
    unsupported: list[Problem] = field(default_factory=list)
    failed: list[Problem] = field(default_factory=list)
    gone: int = 0
    """Stored rows whose path is no longer a file to embed: kept, not deleted."""
    rows: int = 0
    seconds: float = 0.0


class Abort(Exception):
    """The run cannot go on: the server cannot be reached, keeps failing or refuses the key."""


@dataclass(frozen=True)
class Loaded:
    candidate: Candidate
    sha256: str
    data: bytes


def embed_folder(options: EmbedOptions) -> Report:
    """Embeds what `options.folder` holds that `options.out` does not, and merges it into the output. On Abort (or an
    interrupt) the rows embedded so far stay in the output's parts, for the next run to resume from."""
    started = time.monotonic()
    store = Store(options.out)
    stored = store.embedded()
    report = Report()
    try:
        asyncio.run(Run(options, store, report).embed(stored))
    finally:
        store.flush()
    report.rows = store.finish()
    report.seconds = time.monotonic() - started
    return report


class Run:
    def __init__(self, options: EmbedOptions, store: Store, report: Report) -> None:
        self.options = options
        self.store = store
        self.report = report
        self.batch_size = options.batch_size
        self.failed_batches_in_a_row = 0

    async def embed(self, stored: dict[str, str]) -> None:
        policy = RetryPolicy(retries=self.options.retries)
        async with BatchClient(
            self.options.server,
            self.options.api_key,
            policy,
            self.options.timeout,
            self.options.concurrency,
            on_retry=lambda problem, delay: warn(f"{problem}; retrying in {delay:.1f} s"),
        ) as self.client:
            await self.check_server()  # before the walk, which may take a while on a large folder
            found = await asyncio.to_thread(walk, self.options.folder, self.options.max_text_bytes)
            self.report.unsupported.extend(found.unsupported)
            self.report.failed.extend(found.unreadable)
            candidates = found.candidates
            self.report.gone = len(stored.keys() - {candidate.relative for candidate in candidates})
            queue: asyncio.Queue[list[Loaded] | None] = asyncio.Queue(maxsize=self.options.concurrency)
            with tqdm(total=len(candidates), unit="file", desc="embedding", smoothing=0.1, dynamic_ncols=True) as bar:
                self.progress = bar
                try:
                    async with asyncio.TaskGroup() as tasks:
                        tasks.create_task(self.read_all(candidates, stored, queue))
                        for _ in range(self.options.concurrency):
                            tasks.create_task(self.send_all(queue))
                except* Abort as aborted:
                    raise aborted.exceptions[0] from None

    async def check_server(self) -> None:
        try:
            health = await self.client.health()
        except RequestFailed as error:
            raise Abort(f"cannot use the server at {self.options.server}: {error}") from None
        for modality, problem in health.get("problems", {}).items():
            warn(f"the server's {modality} model is unavailable, its files will fail: {problem}")

    async def read_all(self, candidates: list[Candidate], stored: dict[str, str], queue: asyncio.Queue) -> None:
        """Reads and hashes the candidates, in order, and queues the ones to send in batches; then one None per
        sender, to stop it."""
        batch: list[Loaded] = []
        for candidate in candidates:
            try:
                loaded = await asyncio.to_thread(load, candidate, self.options.max_text_bytes)
            except Unsupported as reason:
                self.report.unsupported.append(Problem(candidate.relative, str(reason)))
                self.progress.update()
                continue
            except OSError as error:
                self.fail(candidate.relative, f"unreadable: {error.strerror or error}")
                self.progress.update()
                continue
            if stored.get(candidate.relative) == loaded.sha256:
                self.report.already += 1
                self.progress.update()
                continue
            batch.append(loaded)
            if len(batch) >= self.batch_size:
                await queue.put(batch)
                batch = []
        if batch:
            await queue.put(batch)
        for _ in range(self.options.concurrency):
            await queue.put(None)

    async def send_all(self, queue: asyncio.Queue) -> None:
        while (batch := await queue.get()) is not None:
            await self.send(batch)

    async def send(self, batch: list[Loaded]) -> None:
        """Embeds a batch and stores its vectors. A batch the server refuses as a whole is sent again in parts: when it
        had too many items, in batches of the server's size (from then on, too); otherwise in halves, until the file
        it refuses is alone, so that the others are embedded."""
        try:
            outcomes = await self.client.embed([(loaded.candidate.kind, loaded.data) for loaded in batch])
        except RequestFailed as error:
            if error.status in (401, 403):
                raise Abort(f"the server refused the request: {error} (pass --api-key or set API_KEY)") from None
            if not error.transient and len(batch) > 1:
                if error.code == "too_many_items":
                    size = self.shrink_batches(len(batch), str(error))
                else:
                    size = (len(batch) + 1) // 2
                for start in range(0, len(batch), size):
                    await self.send(batch[start : start + size])
                return
            outcomes = [str(error)] * len(batch)
            self.failed_batches_in_a_row = self.failed_batches_in_a_row + 1 if error.transient else 0
            if self.failed_batches_in_a_row >= ABORT_AFTER_FAILED_BATCHES:
                raise Abort(f"{self.failed_batches_in_a_row} batches in a row failed, the last with: {error}") from None
        else:
            self.failed_batches_in_a_row = 0
        for loaded, outcome in zip(batch, outcomes, strict=True):
            candidate = loaded.candidate
            if isinstance(outcome, str):
                self.fail(candidate.relative, outcome)
            else:
                self.store.add(Row(candidate.relative, candidate.kind.value, loaded.sha256, outcome))
                self.report.embedded[candidate.kind.value] += 1
        self.progress.update(len(batch))

    def shrink_batches(self, refused: int, message: str) -> int:
        """The batch size from now on: the server's limit when its message says it ("... more than 8 ..."), else
        half the refused batch."""
        said = re.search(r"more than (\d+)", message)
        size = int(said[1]) if said and 0 < int(said[1]) < refused else refused // 2
        if size < self.batch_size:
            self.batch_size = size
            warn(
                f"the server refused {refused} files in one request ({message}): batches of {size} from now on; "
                "set --batch-size to at most the server's MAX_ITEMS_PER_REQUEST"
            )
        return size

    def fail(self, relative: str, reason: str) -> None:
        self.report.failed.append(Problem(relative, reason))
        self.progress.set_postfix(failed=len(self.report.failed), refresh=False)


def load(candidate: Candidate, max_text_bytes: int) -> Loaded:
    data = read(candidate, max_text_bytes)
    return Loaded(candidate, hashlib.sha256(data).hexdigest(), data)


def warn(message: str) -> None:
    tqdm.write(f"warning: {message}", file=sys.stderr)


def format_report(report: Report, out: Path) -> str:
    """The run's summary, as printed at its end."""
    embedded = sum(report.embedded.values())
    by_type = ", ".join(f"{report.embedded[kind]} {kind}" for kind in ("text", "image"))
    rate = embedded / report.seconds if report.seconds else 0.0
    lines = [
        f"embedded {files(embedded)} ({by_type}) in {report.seconds:.1f} s ({rate:.1f} files/s)",
        f"already in {out.name} from an earlier run: {files(report.already)}",
    ]
    for title, problems in (("unsupported, not embedded", report.unsupported), ("failed", report.failed)):
        lines.append(f"{title}: {files(len(problems))}")
        lines.extend(
            f"  {problem.relative}: {problem.reason}" for problem in sorted(problems, key=attrgetter("relative"))
        )
    if report.gone:
        lines.append(f"kept the rows of {files(report.gone)} no longer in the folder")
    lines.append(f"{out}: {report.rows} rows")
    return "\n".join(lines)


def files(count: int) -> str:
    return f"{count} file" if count == 1 else f"{count} files"
