"""The README's main command (prepare the built-in demo at 64 px) keeps what it generates."""

import json

from prx_jax.prepare import main


def test_readme_main_job(tmp_path, capsys):
    out = tmp_path / "demo-data"
    args = ["demo:48", str(out), "--resolution", "64", "--patch-size", "32", "--quiet"]
    assert main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_records"] >= 46  # the demo may repeat a scene exactly (deduplicated)
    assert set(manifest["skipped"]) <= {"duplicate"}
    assert "kept" in capsys.readouterr().out
