"""DecodeSettings is the one definition of every decoding option: the command line's flags, the Python API's
keywords, the web server's form fields and what a preset may recommend all come from its fields."""

from __future__ import annotations

import pytest

from captioner.cli.command import build_parser
from captioner.decoding.settings import RECOMMENDABLE, DecodeSettings, settings_from
from captioner.options import specs

OPTIONS = [spec for spec in specs(DecodeSettings) if spec.cli]


def test_every_option_is_a_flag_of_each_decoding_command() -> None:
    parsers = build_parser().subcommand_parsers
    for command in ("caption", "evaluate"):
        actions = {action.dest: action for action in parsers[command]._actions}
        for spec in OPTIONS:
            action = actions["sample_seed" if spec.name == "seed" else spec.name]
            assert parsers[command].option_defaults[action.dest] == spec.default
            assert spec.help in (action.help or "")  # with the default added where the help does not say it


def test_every_option_is_a_keyword_of_the_api_and_a_field_of_the_server() -> None:
    pytest.importorskip("fastapi")
    from captioner.serve.app import FIELDS, settings_from_fields

    assert [spec.name for spec in FIELDS] == [spec.name for spec in OPTIONS]
    assert settings_from({spec.name: spec.default for spec in OPTIONS}) == DecodeSettings()
    sent = {"strategy": "sample", "temperature": "0.7", "top_k": "5", "top_p": "0.9", "seed": "3",
            "flip_average": "on", "max_length": "20"}
    assert settings_from_fields(sent) == DecodeSettings("sample", max_length=20, temperature=0.7, top_k=5, top_p=0.9,
                                                        seed=3, flip_average=True)
    with pytest.raises(TypeError, match="unknown decoding option"):
        settings_from({"beam": 3})


def test_what_a_preset_may_recommend() -> None:
    assert set(RECOMMENDABLE) == {"strategy", "beam_size", "max_length", "length_penalty", "no_repeat_ngram",
                                  "temperature", "top_k", "top_p", "flip_average"}


def test_wrong_values_name_the_option() -> None:
    with pytest.raises(ValueError, match="beam_size 0: must be at least 1"):
        DecodeSettings(beam_size=0)
    with pytest.raises(ValueError, match="greedy decoding writes one caption"):
        DecodeSettings("greedy", num_captions=2)
