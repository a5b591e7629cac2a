"""`personalive weights download` with the hub replaced by a local test double (no network here)."""

import shutil
from pathlib import Path

import huggingface_hub
import pytest
from typer.testing import CliRunner

from personalive_cli.cli.app import app
from personalive_cli.pipeline.components import PersonaLiveModels
from personalive_cli.weights import HUB_REPOS, resolve_weights


@pytest.fixture
def fake_hub(monkeypatch, tmp_path, tiny_weights):
    """TEST DOUBLE of huggingface_hub.snapshot_download: serves the tiny model's files per repo,
    laid out as the hub repos are (the release nests its .pth files in a sub-folder)."""
    cache = tmp_path / "hub_cache"
    sources = {
        HUB_REPOS["personalive"]: [(tiny_weights / "personalive", "pretrained_weights/personalive")],
        HUB_REPOS["sd-image-variations-diffusers"]: [
            (tiny_weights / "sd-image-variations-diffusers/unet", "unet"),
            (tiny_weights / "sd-image-variations-diffusers/image_encoder", "image_encoder")],
        HUB_REPOS["sd-vae-ft-mse"]: [(tiny_weights / "sd-vae-ft-mse", ".")],
    }
    calls = []

    def snapshot_download(repo_id, local_dir=None, allow_patterns=None, local_files_only=False, **kw):
        calls.append((repo_id, local_dir, local_files_only))
        base = Path(local_dir) if local_dir else cache / repo_id.replace("/", "--")
        if local_files_only and not base.exists():
            raise huggingface_hub.errors.LocalEntryNotFoundError(f"{repo_id} not in cache")
        if repo_id not in sources:
            raise OSError(f"offline: cannot reach {repo_id}")
        for src, rel in sources[repo_id]:
            shutil.copytree(src, base / rel, dirs_exist_ok=True)
        return str(base)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.delenv("PERSONALIVE_WEIGHTS", raising=False)
    return calls


def test_download_into_folder_gives_official_layout(tmp_path, fake_hub):
    target = tmp_path / "pretrained_weights"
    r = CliRunner().invoke(app, ["weights", "download", str(target)])
    assert r.exit_code == 0, r.output
    layout = resolve_weights(target)
    assert (layout.personalive / "denoising_unet.pth").is_symlink()
    PersonaLiveModels.from_pretrained(layout)  # loads exactly
    assert CliRunner().invoke(app, ["weights", "check", str(target)]).exit_code == 0


def test_download_into_hub_cache_is_found_without_weights(fake_hub):
    with pytest.raises(Exception, match="weights download"):
        resolve_weights(None)
    r = CliRunner().invoke(app, ["weights", "download"])
    assert r.exit_code == 0, r.output
    layout = resolve_weights(None)
    assert layout.personalive.name == "personalive" and (layout.personalive / "pose_guider.pth").is_file()
    assert all(local is None for _, local, offline in fake_hub if not offline)


def test_download_failure_is_one_line(tmp_path, fake_hub, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'\nmore details")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    r = CliRunner().invoke(app, ["weights", "download", str(tmp_path / "w")])
    assert r.exit_code == 1
    assert "Traceback" not in r.stderr and r.exception is None or isinstance(r.exception, SystemExit)
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: download of huaichang/PersonaLive failed: We couldn't connect")


def test_optional_parts_reach_the_download(tmp_path, fake_hub):
    r = CliRunner().invoke(app, ["weights", "download", "--with", "taesd", str(tmp_path / "w")])
    assert r.exit_code == 1  # the test double has no TAESD repo: asked for, so fetched, so it fails
    assert r.stderr.strip().splitlines()[-1].startswith("error: download of madebyollin/taesd failed")
    r = CliRunner().invoke(app, ["weights", "download", "--with", "nope", str(tmp_path / "w2")])
    assert r.exit_code == 1 and "no optional part 'nope' (its parts: taesd)" in r.stderr
    assert not (tmp_path / "w2").exists()


def test_demo_downloads_on_first_use_then_animates(tmp_path, fake_hub, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["demo", "--size", "128", "--frames", "4", "--crop", "none"])
    assert r.exit_code == 0, r.output
    first = r.stderr.strip().splitlines()[0]
    assert first.startswith("personalive weights not found: downloading them into the Hugging Face cache")
    assert (tmp_path / "demo.mp4").is_file()
    r = CliRunner().invoke(app, ["demo", "--size", "128", "--frames", "4", "--crop", "none", "-o", "again.mp4"])
    assert r.exit_code == 0 and "downloading" not in r.stderr  # found in the cache the second time
