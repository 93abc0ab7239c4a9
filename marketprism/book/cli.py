"""``marketprism book ...``: the book engine's commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import orjson
import typer

from marketprism.book.sync import DEFAULT_BUFFER_LIMIT
from marketprism.book.verify import verify as run_verify
from marketprism.venues import VENUES

book_app = typer.Typer(help="Local order books: verify recordings with the sync engine.", no_args_is_help=True)


@book_app.command()
def verify(
    files: Annotated[list[Path], typer.Argument(help="capture / recording files, merged by receive time")],
    venue: Annotated[
        str | None, typer.Option(help=f"parse every frame as this venue ({', '.join(VENUES)}); default: inferred")
    ] = None,
    snapshot: Annotated[
        list[str] | None,
        typer.Option(help="[INSTRUMENT=]FILE: a REST depth body applied before that instrument's first frame"),
    ] = None,
    buffer_limit: Annotated[int, typer.Option(help="updates buffered per symbol while awaiting a snapshot")] = (
        DEFAULT_BUFFER_LIMIT
    ),
    rest_companions: Annotated[
        bool, typer.Option(help="also read the *.http.raw.txt next to each cryptofeed *.ws.raw.txt")
    ] = True,
) -> None:
    """Run the book sync engine over recorded frames and print one JSON line of counts.

    Reads MarketPrism captures (``collect --record``: frames, the REST snapshots the collector fetched after
    each (re)subscription, and its status records, whose ``disconnected`` explains the break at a reconnect
    so that it is a resync, not a gap), cryptofeed raw recordings (``*.ws.raw.txt`` with the
    ``*.http.raw.txt`` next to it), hftbacktest recordings and frame-per-line ``.jsonl`` files (gzip or
    zstd). REST depth bodies in them are the Binance snapshots, applied where they were received; for
    ``.jsonl`` files pass them with ``--snapshot``. The venue of each frame is its recorded URL (or a
    simulator's ``/<venue>/`` path), else the frame's shape, unless ``--venue`` is given.

    Prints ``ok``, input counts, the totals (frames, applied, dropped_before_bridge, gaps, resyncs,
    checksum_ok, checksum_failed, ...) and the same per symbol. Exit status 1 when a gap, a checksum
    failure or a crossed book was found, or when nothing was verified (no depth frames, or a symbol that
    never got a snapshot: listed in ``never_synced``); 2 for bad arguments.
    """
    for f in files:
        if not f.is_file():
            raise typer.BadParameter(f"no such file: {f}", param_hint="FILES")
    try:
        report = run_verify(files, venue=venue, snapshots=snapshot or [], buffer_limit=buffer_limit,
                            rest_companions=rest_companions)  # fmt: skip
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    print(orjson.dumps(report.as_dict()).decode(), flush=True)
    if not report.ok:
        raise typer.Exit(1)
