"""The generated reference pages (schema, task configuration) match the code."""

from __future__ import annotations

import runpy
from pathlib import Path

GENERATOR = Path(__file__).resolve().parents[1] / "doc" / "tools" / "generate_reference.py"


def test_generated_reference_pages_are_up_to_date() -> None:
    namespace = runpy.run_path(str(GENERATOR))
    assert namespace["main"](["--check"]) == 0, "run `python doc/tools/generate_reference.py` and commit"


def test_schema_page_documents_every_catalog_column() -> None:
    namespace = runpy.run_path(str(GENERATOR))
    page = namespace["schema_page"]()
    from lsst.meas.extensions.deepdisc.core.catalog import catalog_columns

    for name, _, _, description in catalog_columns(("g", "r", "i"), ("star", "galaxy")):
        assert f"``{name}``" in page
        assert description in page


def test_config_page_lists_every_task_field() -> None:
    namespace = runpy.run_path(str(GENERATOR))
    page = namespace["config_page"]()
    from lsst.meas.extensions.deepdisc.tasks.detect import DeepDiscDetectConfig

    for name in DeepDiscDetectConfig._fields:
        if name not in ("connections", "saveLogOutput", "saveMetadata"):
            assert f"``{name}``" in page, name
