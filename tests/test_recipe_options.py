"""grpo.recipe: the run-directory options, the model-path error and the presets' help text."""
import inspect

import pytest

from grpo.recipe import PRESETS, build_parser, parse_args


def test_overwrite_is_an_option_with_help_and_defaults_to_false():
    assert parse_args([]).train.overwrite is False
    assert parse_args(["--overwrite"]).train.overwrite is True
    assert parse_args(["--overwrite", "false", "--resume"]).train.resume is True
    text = " ".join(build_parser().format_help().split())
    assert "--overwrite" in text and "Replace the earlier run in output_dir" in text
    assert "refused unless resume or overwrite is given" in text


def test_missing_model_path_lists_every_accepted_value():
    with pytest.raises(ValueError, match=r"a model path is required \(a Qwen2.5-VL directory, hub id, 'toy' or "
                                         r"'tiny'\)"):
        parse_args(["--preset", "seg_zero_3b"])


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_launch_commands_keep_their_line_breaks(name):
    # an option line of a launch command follows a line ending in a backslash (shown as typed in --help)
    lines = inspect.getdoc(PRESETS[name]).splitlines()
    for prev, line in zip(lines, lines[1:]):
        if line.lstrip().startswith("--") and line.startswith("    "):
            assert prev.endswith(" \\"), (name, prev, line)
    assert "hf_export             --" not in inspect.getdoc(PRESETS[name])
    assert "(then " not in inspect.getdoc(PRESETS[name])
