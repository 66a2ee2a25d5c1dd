"""Bulk client for folders: embed every text and image file of a folder through the server, then find duplicates.

    python -m client embed DIR --server URL --out vectors.parquet [--batch-size 16] [--concurrency 4]
                                [--max-text-bytes 100000] [--api-key KEY] [--retries 5] [--timeout 120]
    python -m client duplicates vectors.parquet [--threshold 0.95] [--json] [--method auto|exact|indexed]
                                [--html report.html] [--csv report.csv] --root DIR [--keep largest|newest|shortest-path]
    python -m client search vectors.parquet "a dog on a beach" --server URL [--top 10] [--json]
    python -m client search vectors.parquet --like PATH [--server URL] [--top 10] [--json]

embed walks DIR (client/files.py says which files are texts and which images), sends them in concurrent multipart
batches to POST /embed/batch (client/upload.py), and writes one row per file, path, type, sha256 and vector, to the
output (client/store.py). A progress bar on stderr counts files/s; the summary on stdout lists every file that was not
embedded and why. Run again, it sends only the files that are new or changed (by sha256) and keeps the other rows,
also after a crash or an interrupt.

duplicates lists the groups of exact and near duplicates of an output (client/duplicates.py, through the index of
client/index.py), and writes them as a page with thumbnails and as CSV for people to decide on (client/report.py).
search lists the files nearest a text or a file (client/search.py).

Exit status of embed: 0 when every text and image file is in the output (unsupported files are listed but do not
count: other types, text files over --max-text-bytes or not UTF-8); 2 when some files failed (unreadable, refused by
the server, e.g. a broken image, or in a batch that failed after every retry): the output holds all the others and
the next run tries the failed ones again; 1 when the run could not go on (the server unreachable or refusing the key,
an output that is not this client's); 130 on an interrupt. After 1 or 130 the files embedded so far are kept in
OUT.parts/, and the next run resumes from them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from client.duplicates import find_groups, format_groups, groups_json
from client.embed import Abort, EmbedOptions, embed_folder, format_report
from client.files import DEFAULT_MAX_TEXT_BYTES
from client.index import EXACT_UP_TO
from client.report import DEFAULT_MAX_GROUPS, KEEP_RULES, plan, write_csv, write_html
from client.search import SearchError, format_results, results_json, search_like, search_text
from client.store import StoreError, parts_folder, read_modalities

EXIT_FAILED_FILES = 2
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
# 16 = the server's default IMAGE_MAX_BATCH_SIZE: a request's images fill one forward pass of the image model, and a
# failed request costs little to send again. A server with a lower MAX_ITEMS_PER_REQUEST answers too_many_items, and
# the client goes on with batches of the limit its answer names (or of half the refused batch).
DEFAULT_BATCH_SIZE = 16
# The server batches concurrent requests together: 4 in flight keep it busy while one request is uploaded and
# decoded; more only queue on the server and risk the timeout.
DEFAULT_CONCURRENCY = 4


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.command(args)
    except StoreError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR


def embed(args: argparse.Namespace) -> int:
    if not args.folder.is_dir():
        print(f"error: {args.folder} is not a folder", file=sys.stderr)
        return EXIT_ERROR
    args.out.parent.mkdir(parents=True, exist_ok=True)
    options = EmbedOptions(
        folder=args.folder,
        server=args.server,
        out=args.out,
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        max_text_bytes=args.max_text_bytes,
        api_key=args.api_key,
        retries=args.retries,
        timeout=args.timeout,
    )
    try:
        report = embed_folder(options)
    except (KeyboardInterrupt, Abort) as stopped:
        print("interrupted" if isinstance(stopped, KeyboardInterrupt) else f"error: {stopped}", file=sys.stderr)
        if parts_folder(args.out).exists():
            print(f"the files embedded so far are in {parts_folder(args.out)}; run again to go on", file=sys.stderr)
        return EXIT_INTERRUPTED if isinstance(stopped, KeyboardInterrupt) else EXIT_ERROR
    print(format_report(report, args.out))
    return EXIT_FAILED_FILES if report.failed else 0


def duplicates(args: argparse.Namespace) -> int:
    if (args.html or args.csv) and not args.root:
        print("error: --html and --csv need --root, the folder that was embedded", file=sys.stderr)
        return EXIT_ERROR
    modalities = read_modalities(args.vectors)
    groups = find_groups(modalities, args.threshold, args.method)
    if args.json:
        print(groups_json(groups))
    else:
        files = sum(len(modality.paths) for modality in modalities.values())
        print(format_groups(groups, files, args.threshold))
    if args.html or args.csv:
        planned = plan(groups, modalities, args.root, args.keep, args.threshold)
        if args.csv:
            write_csv(args.csv, planned)
            print(f"wrote {args.csv}: {len(planned)} groups", file=sys.stderr)
        if args.html:
            shown = write_html(
                args.html,
                planned,
                args.root,
                source=args.vectors.name,
                threshold=args.threshold,
                keep=args.keep,
                max_groups=args.html_groups,
            )
            print(f"wrote {args.html}: {shown} of {len(planned)} groups", file=sys.stderr)
    return 0


def search(args: argparse.Namespace) -> int:
    if args.text is None and args.like is None:
        print("error: give a TEXT to search for, or --like PATH", file=sys.stderr)
        return EXIT_ERROR
    if args.text is not None and args.server is None:
        print("error: a text search needs --server, which embeds the text", file=sys.stderr)
        return EXIT_ERROR
    modalities = read_modalities(args.vectors)
    try:
        if args.text is not None:
            results = search_text(modalities, args.text, args.server, args.api_key, args.top)
        else:
            results = search_like(modalities, args.like, args.server, args.api_key, args.top)
    except SearchError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    query = repr(args.text) if args.text is not None else args.like
    print(results_json(results) if args.json else format_results(results, query))
    return 0


def at_least(minimum: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        number = int(value)
        if number < minimum:
            raise argparse.ArgumentTypeError(f"{value} is less than {minimum}")
        return number

    return parse


def parser() -> argparse.ArgumentParser:
    main_parser = argparse.ArgumentParser(
        prog="python -m client", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = main_parser.add_subparsers(required=True, metavar="COMMAND")

    command = commands.add_parser("embed", help="embed a folder's text and image files into a Parquet file")
    command.set_defaults(command=embed)
    command.add_argument("folder", type=Path, metavar="DIR")
    command.add_argument("--server", required=True, help="the server's URL, e.g. http://localhost:3000")
    command.add_argument("--out", type=Path, required=True, help="the Parquet file, created or resumed")
    command.add_argument(
        "--batch-size", type=at_least(1), default=DEFAULT_BATCH_SIZE, help="files per request (default %(default)s)"
    )
    command.add_argument(
        "--concurrency", type=at_least(1), default=DEFAULT_CONCURRENCY, help="requests in flight (default %(default)s)"
    )
    command.add_argument(
        "--max-text-bytes",
        type=at_least(1),
        default=DEFAULT_MAX_TEXT_BYTES,
        help="larger text files are skipped (default %(default)s)",
    )
    command.add_argument("--api-key", default=os.environ.get("API_KEY") or None, help="the server's key (env API_KEY)")
    command.add_argument(
        "--retries",
        type=at_least(0),
        default=5,
        help="retries of a request that failed transiently (default %(default)s)",
    )
    command.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for one answer (default %(default)s)"
    )

    command = commands.add_parser("duplicates", help="list groups of exact and near-duplicate files")
    command.set_defaults(command=duplicates)
    command.add_argument("vectors", type=Path, help="a Parquet file written by embed")
    command.add_argument(
        "--threshold",
        type=float,
        default=0.95,
        help="cosine similarity from which two files are near duplicates (default %(default)s)",
    )
    command.add_argument(
        "--method",
        choices=["auto", "exact", "indexed"],
        default="auto",
        help="compare every pair (exact), or through the index (indexed: large sets, may miss a pair in 10,000); "
        f"auto: exact up to {EXACT_UP_TO:,} files of a type (default %(default)s)",
    )
    command.add_argument("--json", action="store_true", help="print the groups as JSON")
    command.add_argument("--html", type=Path, help="also write the groups as a page with previews (needs --root)")
    command.add_argument("--csv", type=Path, help="also write the groups as CSV, a row per file (needs --root)")
    command.add_argument("--root", type=Path, help="the folder that was embedded: the files' sizes, times, previews")
    command.add_argument(
        "--keep",
        choices=list(KEEP_RULES),
        default="largest",
        help="which file of a group the report suggests keeping (default %(default)s)",
    )
    command.add_argument(
        "--html-groups",
        type=at_least(1),
        default=DEFAULT_MAX_GROUPS,
        help="the page shows this many groups, those that free most (default %(default)s; the CSV has all)",
    )

    command = commands.add_parser("search", help="the files nearest a text, or nearest a file")
    command.set_defaults(command=search)
    command.add_argument("vectors", type=Path, help="a Parquet file written by embed")
    query = command.add_mutually_exclusive_group()
    query.add_argument("text", nargs="?", help="the images and the texts nearest this text")
    query.add_argument("--like", metavar="PATH", help="the files nearest this one: a path as stored, or a file")
    command.add_argument("--server", help="the server's URL: embeds the text (or a file not in the vectors file)")
    command.add_argument("--top", type=at_least(1), default=10, help="matches of each type (default %(default)s)")
    command.add_argument("--api-key", default=os.environ.get("API_KEY") or None, help="the server's key (env API_KEY)")
    command.add_argument("--json", action="store_true", help="print the matches as JSON")
    return main_parser


if __name__ == "__main__":
    sys.exit(main())
