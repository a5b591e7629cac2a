import json

from typer.testing import CliRunner

from personalive_cli.cli.app import app


def test_methods_table_and_json():
    runner = CliRunner()
    r = runner.invoke(app, ["methods"])
    assert r.exit_code == 0, r.output
    assert "still" in r.stderr
    r = runner.invoke(app, ["methods", "--json"])
    assert r.exit_code == 0
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["still"]["ready"] is True and rows["still"]["frames_per_step"] == 1


def test_version_on_stdout():
    from personalive_cli import __version__

    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout.strip() == __version__
