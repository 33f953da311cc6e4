"""The contract's comments show store keys as the gateway makes them: an example key of a job's
artifact in proto/mvgen/v1/*.proto is one JobLayout gives for a job the gateway created."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.server.records import JobRecord

PROTO_DIR = Path(__file__).resolve().parents[1] / "proto" / "mvgen" / "v1"
EXAMPLE_KEY = re.compile(r'"([a-z]+/<job>/[^"]+)"')


def test_example_keys_in_the_contract_are_keys_the_gateway_makes():
    record = JobRecord("<job>", "client", "", None, None, None)  # only its layout is asked for
    layout = record.layout
    made = {layout.segments, layout.labels, layout.script, layout.final, layout.clip(7)}
    examples = {key for proto in PROTO_DIR.glob("*.proto")
                for line in proto.read_text().splitlines() if line.strip().startswith("//")
                for key in EXAMPLE_KEY.findall(line)}
    assert examples, "no example keys found: the pattern no longer matches the comments"
    assert examples <= made, sorted(examples - made)
