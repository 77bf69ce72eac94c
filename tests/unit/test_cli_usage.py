"""What the command line says when it is given too little."""

from xnatfs.cli import main


def test_xnatfs_alone_lists_the_commands(capsys) -> None:
    assert main([]) == 2
    err = capsys.readouterr().err
    for command in ("mount", "umount", "status", "demo", "cache"):
        assert f"    {command} " in err, err
