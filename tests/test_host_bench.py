"""``make bench``'s compiler and emulator table: a configuration that cannot hold the model
gets a row saying why, and the others still run."""

from host.bench import bench
from tests.helpers.models import MODEL, TEXT, TOKENIZER, need_shared


def test_a_config_that_cannot_hold_the_model_gets_a_row():
    need_shared()
    table = bench(str(MODEL), str(TOKENIZER), str(TEXT), ["u280"], "w8a8", 4, 1)
    row = next(line for line in table.splitlines() if line.startswith("| u280 |"))
    assert "does not fit" in row and "head_dim 8" in row, row
    rule = next(line for line in table.splitlines() if line.startswith("|---"))
    assert row.count("|") == rule.count("|"), "the row has the table's columns"
