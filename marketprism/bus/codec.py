"""Bus payload codec: JSON via msgspec, typed by the subject's data type.

Subjects are ``md.<data_type>.<exchange>.<market>.<symbol>``; the payload is the record's fields as a JSON
object (see docs/payloads.md). Fields equal to their default (e.g. ``null`` sequence fields) are omitted.
"""

from __future__ import annotations

import msgspec

from marketprism.records import RECORD_TYPES, DataType, Record

_encoder = msgspec.json.Encoder()
_decoders = {dt: msgspec.json.Decoder(cls) for dt, cls in RECORD_TYPES.items()}

SUBJECT_PREFIX = "md"


def encode(record: Record) -> bytes:
    return _encoder.encode(record)


def decode(data_type: DataType | str, payload: bytes) -> Record:
    record: Record = _decoders[DataType(data_type)].decode(payload)
    return record


def subject_data_type(subject: str) -> DataType:
    parts = subject.split(".")
    if len(parts) != 5 or parts[0] != SUBJECT_PREFIX:
        raise ValueError(f"not a market-data subject: {subject!r} (want md.<type>.<exchange>.<market>.<symbol>)")
    return DataType(parts[1])


def decode_subject(subject: str, payload: bytes) -> Record:
    return decode(subject_data_type(subject), payload)


def subject_filter(data_type: str = "*", exchange: str = "*", market: str = "*", symbol: str = "*") -> str:
    return f"{SUBJECT_PREFIX}.{data_type}.{exchange}.{market}.{symbol}"
