"""The report of a run, one module per concern: the typed records (``records``), building and
writing report.json / samples.jsonl (``build``), the validity checks (``checks``), the papers'
questions answered (``findings``) and the Markdown rendering (``markdown``). ``schema.json`` is the
published JSON Schema of ``avharness/report@1``."""

import json
from importlib import resources

from .build import SCHEMA, build_report, write_report
from .records import CellRecord, ModelRecord, SampleRecord, cell_id


def json_schema() -> dict:
    """The JSON Schema of report.json (``avharness/report@1``), as published in this package."""
    return json.loads(resources.files(__name__).joinpath("schema.json").read_text())


__all__ = ["SCHEMA", "CellRecord", "ModelRecord", "SampleRecord", "build_report", "cell_id", "json_schema",
           "write_report"]
