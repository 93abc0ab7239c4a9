"""Local L2 order books kept provably in sync with each venue.

* ``marketprism.book.l2``: ``L2Book`` (fast apply, top N, crossed check, OKX checksum on venue strings).
* ``marketprism.book.sync``: one sync state machine per venue rule (``BinanceSpotSync``,
  ``BinanceFuturesSync``, ``OkxBookSync``, ``BybitBookSync``) and ``SymbolBooks``, which routes depth and
  status records to them per (exchange, market, symbol) and collects resync requests.
* ``marketprism.book.records``: the ``book`` and ``book_delta`` record types.
* ``marketprism.book.snapshots``: REST depth bodies -> snapshot ``Depth`` records.
* ``marketprism.book.verify`` / ``marketprism.book.cli``: ``marketprism book verify`` over recordings.

Kept free of imports here: ``marketprism.records`` imports ``marketprism.book.records`` while it loads.
"""
