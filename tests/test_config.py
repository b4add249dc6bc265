"""The accelerator configuration: presets, validation messages, serialisation."""

import json

import pytest

from llmacc import config
from llmacc.config import AccelConfig, ConfigError


def test_presets_exist_and_are_valid():
    small, u280 = config.preset("sim-small"), config.preset("u280")
    assert small.dsps < 100 and u280.dsps <= u280.device_dsps
    assert u280.mem_channels == 32 and u280.axi_data_bits == 512
    assert u280.mem_bandwidth_gbps == pytest.approx(460.0)
    assert u280.max_seq_len == 2048


def test_unknown_preset_lists_known():
    with pytest.raises(ConfigError, match="sim-small"):
        config.preset("u999")


@pytest.mark.parametrize("field,value,message", [
    ("chain_len", 24, "chain_len = 24: must be a multiple of chain_group"),
    ("chain_group", 3, "chain_group = 3"),
    ("mv_rows", 0, "mv_rows = 0: must be positive"),
    ("mv_rows", 1000, "mv_rows = 1000: .* exceed the device"),
    ("clock_mhz", "fast", "clock_mhz = 'fast': must be a number"),
    ("axi_data_bits", 100, "axi_data_bits = 100"),
    ("mem_channels", 64, "mem_channels = 64: the ISA addresses at most 32"),
    ("act_buffer_bytes", 1000, "act_buffer_bytes = 1000: must be a multiple of the AXI word"),
    ("weight_buffer_bytes", 1 << 30, "weight_buffer_bytes = .*16-bit buffer address"),
    ("max_seq_len", 4096 + 128, "max_seq_len"),
    ("max_seq_len", 500, "max_seq_len = 500: must be a multiple of both bucket sizes"),
    ("weight_group", 48, "weight_group = 48"),
    ("pack_products", 3, "pack_products = 3"),
    ("record_matrices", 1, "record_matrices = 1: must be true or false"),
    ("attention_int8_steps", 4, "attention_int8_steps = 4: must be 1 or 2"),
    ("attention_int8_steps", 2, "attention_wide = True: needs attention_int8_steps = 1"),
])
def test_validation_names_field_and_value(field, value, message):
    with pytest.raises(ConfigError, match=message):
        config.preset("u280").replace(**{field: value})


def test_json_round_trip(tmp_path):
    cfg = config.preset("sim-small")
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert config.load(path) == cfg
    assert config.load("sim-small") is cfg


def test_json_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        config.load(bad)
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({**config.preset("sim-small").to_dict(), "bogus": 1}))
    with pytest.raises(ConfigError, match="unknown fields"):
        config.load(extra)
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps({"name": "x"}))
    with pytest.raises(ConfigError, match="missing fields"):
        config.load(missing)
    with pytest.raises(ConfigError, match="neither a preset"):
        config.load(tmp_path / "absent.json")


def test_fingerprint_tracks_config():
    small = config.preset("sim-small")
    assert small.fingerprint() == AccelConfig.from_dict(small.to_dict()).fingerprint()
    assert small.fingerprint() != small.replace(clock_mhz=150.0).fingerprint()
    assert 0 <= small.fingerprint() < 1 << 32
