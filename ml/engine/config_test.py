"""Config dataclass -> flags: precedence, validation, and error messages that name the fix."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from ml.engine.config import TrainerConfig, config_from_dict, help_text, parse_config
from ml.engine.errors import ConfigError


@dataclass
class DemoConfig(TrainerConfig):
    embed_dim: int = field(default=32, metadata={"help": "embedding width"})
    mlp_dims: tuple[int, ...] = field(default=(64, 32), metadata={"help": "hidden sizes"})
    head: Literal["dot", "mlp"] = field(default="dot", metadata={"help": "scoring head"})
    note: str | None = field(default=None, metadata={"help": "free text"})


def test_defaults_flags_and_set_precedence():
    cfg = parse_config(DemoConfig, [])
    assert (cfg.embed_dim, cfg.mlp_dims, cfg.precision, cfg.resume) == (32, (64, 32), "fp32", False)
    cfg = parse_config(DemoConfig, ["--embed-dim", "16", "--set", "embed_dim=8", "--mlp-dims", "8,4", "--resume",
                                    "--precision", "bf16", "--set", "note=none", "--set", "max-steps=5"])
    assert (cfg.embed_dim, cfg.mlp_dims, cfg.resume, cfg.precision, cfg.note, cfg.max_steps) == (8, (8, 4), True, "bf16", None, 5)


def test_unknown_set_key_names_it_and_suggests():
    with pytest.raises(ConfigError, match=r"unknown config key 'embed_dims'; did you mean embed_dim") as info:
        parse_config(DemoConfig, ["--set", "embed_dims=3"])
    assert "Known keys:" in str(info.value)


def test_unknown_flag_rejected():
    with pytest.raises(ConfigError, match="unrecognized arguments: --embedding 3"):
        parse_config(DemoConfig, ["--embedding", "3"])


@pytest.mark.parametrize("argv,message", [
    (["--precision", "fp8"], "precision='fp8' is invalid: expected one of fp32, bf16, fp16"),
    (["--set", "head=cnn"], "head='cnn' is invalid: expected one of dot, mlp"),
    (["--embed-dim", "wide"], "embed_dim='wide' is invalid: expected a int"),
    (["--set", "resume=maybe"], "resume='maybe' is invalid: expected true or false"),
    (["--set", "lr"], "expected KEY=VALUE"),
    (["--batch-size", "0"], "batch_size must be >= 1, got 0"),
    (["--lr", "-1"], "lr must be > 0, got -1.0"),
])
def test_bad_values_fail_naming_key_and_allowed(argv, message):
    with pytest.raises(ConfigError) as info:
        parse_config(DemoConfig, argv)
    assert message in str(info.value)


def test_help_documents_every_field():
    text = " ".join(help_text(DemoConfig, prog="train").split())
    for flag in ("--embed-dim", "--mlp-dims", "--head", "--precision", "--nproc", "--resume", "--set", "--profile"):
        assert flag in text
    assert "embedding width" in text and "fp16 autocast + grad scaler (CUDA only)" in text


def test_field_without_help_is_a_definition_error():
    @dataclass
    class Bad(TrainerConfig):
        undocumented: int = 1

    with pytest.raises(ConfigError, match="Bad.undocumented has no help text"):
        parse_config(Bad, [])


def test_round_trip_through_dict_rejects_unknown_keys():
    cfg = parse_config(DemoConfig, ["--mlp-dims", "3,2"])
    from ml.engine.config import config_to_dict

    assert config_from_dict(DemoConfig, config_to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="unknown config key 'bogus'"):
        config_from_dict(DemoConfig, {"bogus": 1})


def test_config_file_sits_between_defaults_and_flags(tmp_path):
    path = tmp_path / "best.yaml"
    path.write_text("# a sweep's best config\nembed_dim: 8\nmlp_dims: [16, 8]\nhead: mlp\nnote: null\nlr: '0.01'\n")
    cfg = parse_config(DemoConfig, ["--config", str(path)])
    assert (cfg.embed_dim, cfg.mlp_dims, cfg.head, cfg.note, cfg.lr) == (8, (16, 8), "mlp", None, 0.01)
    cfg = parse_config(DemoConfig, ["--config", str(path), "--embed-dim", "4", "--set", "head=dot"])
    assert (cfg.embed_dim, cfg.mlp_dims, cfg.head) == (4, (16, 8), "dot")
    (tmp_path / "c.json").write_text('{"embed_dim": 12}')
    assert parse_config(DemoConfig, ["--config", str(tmp_path / "c.json")]).embed_dim == 12


def test_bad_config_file_names_the_file_key_and_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"--config .*missing.yaml: cannot read it"):
        parse_config(DemoConfig, ["--config", str(tmp_path / "missing.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("embed_dims: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'embed_dims'; did you mean embed_dim"):
        parse_config(DemoConfig, ["--config", str(bad)])
    bad.write_text("embed_dim: many\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: embed_dim='many' is invalid: expected a int"):
        parse_config(DemoConfig, ["--config", str(bad)])
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"expected a mapping of config keys"):
        parse_config(DemoConfig, ["--config", str(bad)])
    bad.write_text("a: [1\n")
    with pytest.raises(ConfigError, match=r"not valid YAML/JSON"):
        parse_config(DemoConfig, ["--config", str(bad)])
