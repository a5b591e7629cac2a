"""Exact loading: the full-size architecture against the official key manifest, and the tiny model
through save_pretrained / from_pretrained, including damaged folders."""

import json
import shutil

import pytest
import torch

from personalive_cli.errors import UserError
from personalive_cli.pipeline.components import PersonaLiveConfig, PersonaLiveModels, check_layout
from personalive_cli.weights import WeightsLayout, read_state_dict, resolve_weights


@pytest.fixture(scope="module")
def manifest(shared_dir):
    path = shared_dir / "reference" / "personalive_checkpoints.json"
    if not path.is_file():
        pytest.skip("checkpoint manifest absent")
    return json.loads(path.read_text())["files"]


def _shapes(entry):
    """Manifest entries are {key: shape} (or {key: {"shape": ...}})."""
    return {k: tuple(v["shape"] if isinstance(v, dict) else v) for k, v in entry.items()}


def test_full_size_architecture_matches_release_manifest(manifest):
    with torch.device("meta"):
        models = PersonaLiveModels(PersonaLiveConfig())
    files = {}
    unet = {k: tuple(v.shape) for k, v in models.denoising_unet.state_dict().items()}
    files["denoising_unet.pth"] = {k: s for k, s in unet.items() if ".temporal_modules." not in k}
    files["temporal_module.pth"] = {k: s for k, s in unet.items() if ".temporal_modules." in k}
    for attr, stem in (("reference_unet", "reference_unet"), ("pose_guider", "pose_guider"),
                       ("motion_encoder", "motion_encoder"), ("keypoint_extractor", "motion_extractor")):
        files[f"{stem}.pth"] = {k: tuple(v.shape) for k, v in getattr(models, attr).state_dict().items()}
    assert set(files) == set(manifest)
    for name, ours in files.items():
        theirs = _shapes(manifest[name])
        theirs.pop("idx_tensor", None)  # a constant buffer of the release's file, checked on load
        assert ours.keys() == theirs.keys(), (name, sorted(ours.keys() ^ theirs.keys())[:5])
        bad = [k for k in ours if ours[k] != theirs[k]]
        assert not bad, (name, bad[:5])


def test_tiny_roundtrip_is_exact(tiny_models, tiny_weights):
    loaded = PersonaLiveModels.from_pretrained(tiny_weights)
    ours, theirs = tiny_models.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert all(r["status"] in ("ok", "optional") for r in check_layout(tiny_weights))


@pytest.fixture
def damaged(tmp_path, tiny_weights):
    root = tmp_path / "w"
    shutil.copytree(tiny_weights, root)
    return root


def test_missing_file_is_named(damaged):
    (damaged / "personalive" / "motion_encoder.pth").unlink()
    with pytest.raises(UserError, match=r"missing .*motion_encoder\.pth"):
        resolve_weights(damaged)
    rows = {r["file"].split("/")[-1]: r for r in check_layout(damaged)}
    assert rows["motion_encoder.pth"]["status"] == "missing"


def test_truncated_file_is_named(damaged):
    path = damaged / "personalive" / "denoising_unet.pth"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(UserError, match=r"cannot read checkpoint .*denoising_unet\.pth.*truncated"):
        PersonaLiveModels.from_pretrained(damaged)


def test_wrong_shape_names_file_and_key(damaged):
    path = damaged / "personalive" / "pose_guider.pth"
    state = {k: v.clone() for k, v in read_state_dict(path).items()}  # not the mmapped file we overwrite
    state["conv_in.weight"] = torch.zeros(8, 3, 3, 3)
    torch.save(state, path)
    with pytest.raises(UserError, match=r"pose_guider\.pth: key conv_in\.weight has shape \(8, 3, 3, 3\)"):
        PersonaLiveModels.from_pretrained(damaged)


def test_unexpected_and_missing_keys_are_named(damaged):
    path = damaged / "personalive" / "reference_unet.pth"
    state = {k: v.clone() for k, v in read_state_dict(path).items()}
    state.pop("conv_in.bias")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(UserError, match=r"reference_unet\.pth: unexpected keys extra\.weight"):
        PersonaLiveModels.from_pretrained(damaged)


def test_safetensors_and_bin_load_too(damaged, tiny_models):
    from safetensors.torch import save_file

    folder = damaged / "personalive"
    state = read_state_dict(folder / "pose_guider.pth")
    (folder / "pose_guider.pth").unlink()
    save_file(state, str(folder / "pose_guider.safetensors"))
    (folder / "motion_encoder.pth").rename(folder / "motion_encoder.bin")
    loaded = PersonaLiveModels.from_pretrained(damaged)
    assert torch.equal(loaded.pose_guider.conv_in.weight, tiny_models.pose_guider.conv_in.weight)
    assert torch.equal(loaded.motion_encoder.final_proj.weight, tiny_models.motion_encoder.final_proj.weight)


def test_weights_resolution_order(monkeypatch, tmp_path, tiny_weights):
    monkeypatch.setenv("PERSONALIVE_WEIGHTS", str(tiny_weights))
    assert resolve_weights(None).personalive == WeightsLayout.from_root(tiny_weights).personalive
    with pytest.raises(UserError, match="weights folder not found"):
        resolve_weights(tmp_path / "nope")  # --weights wins over the environment
    monkeypatch.delenv("PERSONALIVE_WEIGHTS")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="personalive weights download"):
        resolve_weights(None)


def test_unknown_config_keys_are_named(damaged):
    path = damaged / "personalive" / "config.json"
    data = json.loads(path.read_text())
    data["unet"]["layers_per_blok"] = 2
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"unknown DenoisingUNetConfig keys: layers_per_blok"):
        PersonaLiveModels.from_pretrained(damaged)
    data["unet"].pop("layers_per_blok")
    data["extra"] = {}
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"unknown sections: extra"):
        PersonaLiveModels.from_pretrained(damaged)
