"""The shipped list of MIL ops the reference evaluator runs (``export/coreml/mil/supported_ops.json``) is the
list the evaluator really runs, with the opsets of the installed coremltools; ``compress devices coreml-ops``
prints it."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("coremltools")

from typer.testing import CliRunner  # noqa: E402

from compress.cli import app  # noqa: E402
from compress.export.coreml.mil import op_list  # noqa: E402
from compress.export.coreml.mil.evaluator import supported_op_types  # noqa: E402


def test_the_shipped_list_is_current():
    shipped, now = op_list.load(), op_list.build()
    assert shipped == now, ("export/coreml/mil/supported_ops.json is stale: run "
                            "`python -m compress.export.coreml.mil.op_list --write`")
    assert [row["op"] for row in shipped["ops"]] == supported_op_types()


def test_opsets_come_from_coremltools_registry():
    rows = {row["op"]: row for row in op_list.load()["ops"]}
    assert rows["scaled_dot_product_attention"]["opsets"] == ["iOS18"]
    assert rows["conv"]["opsets"] == ["iOS15", "iOS16", "iOS17", "iOS18"]
    assert "iOS17" in rows["conv"]["definitions"]  # conv was redefined in iOS17: the evaluator follows both
    assert rows["while_loop"]["family"] == "control_flow" and rows["lstm"]["family"] == "recurrent"
    listed = set(rows)
    assert not listed & set(op_list.load()["not_supported"])


def test_cli_prints_the_list_and_its_json():
    runner = CliRunner()
    table = runner.invoke(app, ["devices", "coreml-ops"])
    assert table.exit_code == 0, table.output
    assert "while_loop" in table.output and "upsample_bilinear" in table.output and "not supported" in table.output
    as_json = runner.invoke(app, ["devices", "coreml-ops", "--json"])
    assert as_json.exit_code == 0
    assert json.loads(as_json.stdout) == op_list.load()
