"""Hypothesis strategies for fuzzing `POST /score` (tests/test_fuzz_server.py): request bodies
inside and outside the request schema, as JSON and as Arrow IPC streams, and the headers around them.

Every strategy here yields a `Case`: the body bytes, the headers, and what the fuzz suite may
assume about the answer (the candidate counts a 2xx may report, or the statuses that are right).
The generators derive their valid requests from the model's input columns (`ModelShape`), so a
change of recipe changes what they send, not this package.

Nothing here talks to a server; the strategies only build bytes.

The modules, each importing only those above it:
- `shape`: `Column`, `ModelShape`, `Case`, the expected statuses, `pick`, `one_in`, the headers;
- `json_text`: JSON trees with repeated keys and raw literals, and their text;
- `values`: ordinary and nasty values (integer edges, number literals, unicode, deep nesting);
- `valid`: valid requests, JSON and Arrow (vectors included);
- `vectors`: valid requests with one vector column broken, JSON and Arrow;
- `json_mutations`: JSON outside the schema, edited as trees and at the byte level;
- `arrow_messages`: Arrow IPC messages located, and byte, header and offset mutations;
- `arrow_schemas`: random Arrow schemas and compression bombs;
- `headers`: header variants and bodies around the size limit.

This module names each generator (`GENERATORS`) and re-exports what the fuzz test uses.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import strategies as st

from tests.fuzz.arrow_messages import arrow_bad_offsets, arrow_byte_mutations
from tests.fuzz.arrow_schemas import arrow_bombs, arrow_random_schemas
from tests.fuzz.headers import body_sizes, chunks, header_variants
from tests.fuzz.json_mutations import perturbed_json, raw_json_text
from tests.fuzz.shape import Case, ModelShape
from tests.fuzz.valid import valid_arrow, valid_json
from tests.fuzz.vectors import arrow_vector_mutations, json_vector_mutations

__all__ = ["GENERATORS", "Case", "ModelShape", "chunks"]

GENERATORS: dict[str, Callable[[ModelShape], st.SearchStrategy[Case]]] = {
    "json.valid": valid_json,
    "arrow.valid": valid_arrow,
    "json.perturbed": perturbed_json,
    "json.raw": raw_json_text,
    "json.vector": json_vector_mutations,
    "arrow.vector": arrow_vector_mutations,
    "arrow.bytes": arrow_byte_mutations,
    "arrow.offsets": arrow_bad_offsets,
    "arrow.schema": arrow_random_schemas,
    "arrow.bomb": arrow_bombs,
    "headers": header_variants,
    "size": body_sizes,
}
