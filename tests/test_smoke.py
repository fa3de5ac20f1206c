from intrakd.cli import main


def test_models_command_lists_zoo(capsys):
    assert main(["models"]) == 0
    assert "resnet8x4" in capsys.readouterr().out
