"""The `search` command: the stored files nearest a text, or nearest a file.

A text is embedded twice by the server: through CLIP's text tower (/embed/image-text), into the space of the image
vectors, to rank the images; and through the text model (/embed/text) to rank the texts. A file (`--like`) ranks the
files of its own type by its stored vector, or, when it is not in the vectors file, by the vector the server gives
it (/embed/batch, as `embed` sends it). The ranking is client/index.py's exact nearest neighbours, on vectors
normalised as `duplicates` normalises them.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from client.files import DEFAULT_MAX_TEXT_BYTES, Candidate, Kind, Unsupported, classify, read
from client.index import nearest, normalized
from client.store import Modality
from client.upload import BatchClient, RequestFailed, RetryPolicy, decode_vector, error_of

# The text query's route for each type of stored file: where the query's vector is comparable to the files'.
QUERY_ROUTES = {"image": "/embed/image-text", "text": "/embed/text"}
TIMEOUT_S = 60.0


class SearchError(Exception):
    """The query cannot be answered: no server given, the server unreachable, a file that cannot be embedded."""


@dataclass(frozen=True)
class Match:
    path: str
    similarity: float


@dataclass(frozen=True)
class Results:
    """The matches of each type of file (best first), and why a type has none when the server could not embed the
    query for it."""

    matches: dict[str, list[Match]]
    problems: dict[str, str]


def search_text(modalities: dict[str, Modality], text: str, server: str, api_key: str | None, top: int) -> Results:
    """The `top` stored files of each type nearest `text`. Raises SearchError when the server cannot be reached."""
    matches, problems = {}, {}
    with httpx.Client(base_url=server.rstrip("/"), headers=authorization(api_key), timeout=TIMEOUT_S) as http:
        for kind, modality in sorted(modalities.items()):
            body = {"texts": [text], "encoding": "base64", "normalize": True, "truncate": True}
            try:
                response = http.post(QUERY_ROUTES[kind], json=body)
            except httpx.TransportError as error:
                raise SearchError(f"cannot reach the server at {server}: {error}") from None
            if response.status_code != 200:
                problems[kind] = f"{QUERY_ROUTES[kind]} answered {error_of(response)[1]}"
                continue
            query = decode_vector(response.json()["embeddings"][0])
            matches[kind] = ranked(modality, query, top)
    return Results(matches, problems)


def search_like(
    modalities: dict[str, Modality], path: str, server: str | None, api_key: str | None, top: int
) -> Results:
    """The `top` stored files of the same type nearest the file `path`: a path as stored (the file itself is left
    out of its matches), or a file on disk, which the server embeds. Raises SearchError when it is neither, or the
    server cannot embed it."""
    for kind, modality in sorted(modalities.items()):
        if path in modality.paths:
            row = modality.paths.index(path)
            return Results({kind: ranked(modality, modality.vectors[row], top, leave_out=row)}, {})
    file = Path(path)
    if not file.is_file():
        raise SearchError(f"{path} is neither a path in the vectors file nor a file")
    if server is None:
        raise SearchError(f"{path} is not in the vectors file: --server is needed to embed it")
    kind = classify(file, DEFAULT_MAX_TEXT_BYTES)
    if not isinstance(kind, Kind):
        raise SearchError(f"{path}: {kind}")
    if kind.value not in modalities:
        raise SearchError(f"{path} is a {kind.value}, and the vectors file has no {kind.value} files")
    vector = asyncio.run(embed_file(kind, read_file(file, kind), server, api_key))
    return Results({kind.value: ranked(modalities[kind.value], vector, top)}, {})


def read_file(file: Path, kind: Kind) -> bytes:
    try:
        return read(Candidate(file, file.name, kind), DEFAULT_MAX_TEXT_BYTES)
    except (OSError, Unsupported) as error:
        raise SearchError(f"{file}: {error}") from None


async def embed_file(kind: Kind, data: bytes, server: str, api_key: str | None) -> np.ndarray:
    try:
        async with BatchClient(server, api_key, RetryPolicy(retries=2), TIMEOUT_S, 1) as client:
            [outcome] = await client.embed([(kind, data)])
    except RequestFailed as error:
        raise SearchError(f"the server could not embed the file: {error}") from None
    if isinstance(outcome, str):
        raise SearchError(f"the server could not embed the file: {outcome}")
    return outcome


def ranked(modality: Modality, query: np.ndarray, top: int, leave_out: int | None = None) -> list[Match]:
    vectors = normalized(modality.vectors)
    query = normalized(query.reshape(1, -1))[0]
    if query.shape[0] != vectors.shape[1]:
        raise SearchError(f"the query's vector has {query.shape[0]} values and the stored ones {vectors.shape[1]}")
    return [
        Match(modality.paths[row], round(similarity, 6)) for row, similarity in nearest(vectors, query, top, leave_out)
    ]


def authorization(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def format_results(results: Results, query: str) -> str:
    lines = []
    for kind in sorted(results.matches.keys() | results.problems.keys()):
        lines.append(f"{kind}s nearest {query}:")
        if kind in results.problems:
            lines.append(f"  none: {results.problems[kind]}")
        lines.extend(f"  {match.similarity:.4f}  {match.path}" for match in results.matches.get(kind, []))
    return "\n".join(lines)


def results_json(results: Results) -> str:
    return json.dumps(
        {
            "matches": {
                kind: [{"path": match.path, "similarity": match.similarity} for match in matches]
                for kind, matches in results.matches.items()
            },
            "problems": results.problems,
        },
        indent=2,
    )
