"""LivePortrait networks: the full-size build against the release manifest, parameter counts, exact loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import SHARED

from baselines.liveportrait.models import (
    BASE_FILES,
    PUBLISHED_PARAMS_M,
    LivePortraitConfig,
    LivePortraitLayout,
    LivePortraitModels,
    check_layout,
    read_stitching_file,
)
from baselines.liveportrait.spade_generator import SpectralConv2d
from baselines.liveportrait.stitching_retargeting import FILE_ENTRIES
from personalive_cli.errors import UserError

MANIFEST = SHARED / "reference" / "liveportrait_checkpoints.json"


@pytest.fixture(scope="module")
def manifest(shared_dir):
    if not MANIFEST.is_file():
        pytest.skip("liveportrait_checkpoints.json absent")
    return json.loads(MANIFEST.read_text())


@pytest.fixture(scope="module")
def meta_full():
    with torch.device("meta"):
        return LivePortraitModels(LivePortraitConfig())


def test_full_size_keys_shapes_and_order_match_the_release(manifest, meta_full):
    for name in BASE_FILES:
        got = {k: list(v.shape) for k, v in getattr(meta_full, name).state_dict().items()}
        expected = manifest["files"][f"{name}.pth"]
        assert got == expected, name
        assert list(got) == list(expected), f"{name}: key order"
    stitching = manifest["files"]["stitching_retargeting_module.pth"]
    for attr, entry in FILE_ENTRIES.items():
        got = {k: list(v.shape) for k, v in getattr(meta_full.stitching_retargeting_module, attr).state_dict().items()}
        assert got == stitching[entry], entry


def test_parameter_counts_equal_the_published_ones(manifest, meta_full):
    counts = meta_full.parameter_counts()
    for name, millions in PUBLISHED_PARAMS_M.items():
        file = f"{name}.pth"
        assert counts[name] == manifest["param_counts"][file]["parameters"], name
        assert round(counts[name] / 1e6, 2) == millions, name
    assert [round(counts[n] / 1e6, 2) for n in PUBLISHED_PARAMS_M] == [0.84, 28.12, 45.53, 55.37, 0.23]


def test_motion_extractor_is_personalives_keypoint_extractor(meta_full):
    from personalive_cli.models.keypoint_extractor import KeypointExtractor

    assert type(meta_full.motion_extractor) is KeypointExtractor


def test_save_and_load_are_symmetric_in_the_official_layout(lp_tiny, lp_tiny_weights):
    root = Path(lp_tiny_weights)
    for rel in ["liveportrait/base_models/appearance_feature_extractor.pth", "liveportrait/base_models/motion_extractor.pth",
                "liveportrait/base_models/warping_module.pth", "liveportrait/base_models/spade_generator.pth",
                "liveportrait/retargeting_models/stitching_retargeting_module.pth", "liveportrait/config.json"]:
        assert (root / rel).is_file(), rel
    nested = torch.load(root / "liveportrait/retargeting_models/stitching_retargeting_module.pth", weights_only=True)
    assert set(nested) == {"retarget_shoulder", "retarget_mouth", "retarget_eye"}
    assert all(k.startswith("module.mlp.") for k in nested["retarget_eye"])
    loaded = LivePortraitModels.from_pretrained(root)
    a, b = lp_tiny.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not any(t.is_meta for t in b.values())
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(lp_tiny.appearance_feature_extractor(x), loaded.appearance_feature_extractor(x))
    assert [r["status"] for r in check_layout(root)][:5] == ["ok"] * 5


def _copy_layout(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_loading_tolerates_release_variations(lp_tiny_weights, tmp_path):
    root = _copy_layout(lp_tiny_weights, tmp_path / "w")
    lay = LivePortraitLayout.from_root(root)
    # BN counters absent, PersonaLive's idx_tensor present, unprefixed MLP keys and extra top-level entries.
    for name in BASE_FILES:
        state = torch.load(lay.base(name), weights_only=True)
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
        if name == "motion_extractor":
            state["idx_tensor"] = torch.arange(66, dtype=torch.float32)
        torch.save(state, lay.base(name))
    nested = torch.load(lay.stitching, weights_only=True)
    nested = {e: {k.replace("module.", ""): v for k, v in sd.items()} for e, sd in nested.items()}
    nested["extra_entry"] = {"whatever": torch.zeros(3)}
    torch.save(nested, lay.stitching)
    models = LivePortraitModels.from_pretrained(root)
    bn = models.warping_module.third.norm
    assert bn.num_batches_tracked.item() == 0 and not bn.num_batches_tracked.is_meta
    assert read_stitching_file(lay.stitching)["retarget_mouth"].keys() == models.stitching_retargeting_module.lip.state_dict().keys()


@pytest.mark.parametrize("damage", ["shape", "missing", "unexpected", "stitching"])
def test_loading_is_exact(lp_tiny_weights, tmp_path, damage):
    root = _copy_layout(lp_tiny_weights, tmp_path / "w")
    lay = LivePortraitLayout.from_root(root)
    path = lay.base("warping_module")
    state = torch.load(path, weights_only=True)
    if damage == "shape":
        state["fourth.bias"] = torch.zeros(3)
        torch.save(state, path)
    elif damage == "missing":
        del state["fourth.bias"]
        torch.save(state, path)
    elif damage == "unexpected":
        state["fifth.weight"] = torch.zeros(3)
        torch.save(state, path)
    else:
        path = lay.stitching
        nested = torch.load(path, weights_only=True)
        del nested["retarget_eye"][list(nested["retarget_eye"])[-1]]
        torch.save(nested, path)
    with pytest.raises(UserError, match=r"fourth\.bias|fifth\.weight|retarget_eye.*mlp\.\d+\.bias") as info:
        LivePortraitModels.from_pretrained(root)
    assert str(path) in str(info.value)
    rows = {r["file"]: r for r in check_layout(root)}
    assert rows[str(path)]["status"] == "mismatch"


def test_missing_folder_and_files_are_clear(tmp_path):
    from baselines.liveportrait.models import resolve_weights

    with pytest.raises(UserError, match="weights folder not found"):
        resolve_weights(tmp_path / "nope")
    (tmp_path / "liveportrait").mkdir()
    with pytest.raises(UserError, match="not a LivePortrait weights folder.*personalive weights download --method liveportrait"):
        resolve_weights(tmp_path)


def test_spectral_conv_matches_torch_spectral_norm_in_eval():
    torch.manual_seed(0)
    ref = torch.nn.utils.spectral_norm(torch.nn.Conv2d(6, 5, 3, padding=1))
    ref.train()
    ref(torch.rand(1, 6, 8, 8))  # a power iteration updates u, v
    ref.eval()
    ours = SpectralConv2d(6, 5, 3, padding=1)
    ours.load_state_dict(ref.state_dict())
    x = torch.rand(2, 6, 8, 8)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-6)
    assert list(ours.state_dict()) == list(ref.state_dict())


def test_tiny_forward_shapes(lp_tiny):
    x = torch.rand(1, 3, 256, 256)
    with torch.inference_mode():
        f_s = lp_tiny.appearance_feature_extractor(x)
        info = lp_tiny.motion_extractor(x, with_exp=True)
        x_s = info.posed(with_exp=True)
        out, occlusion, deformation = lp_tiny.warping_module(f_s, x_s, x_s)
        image = lp_tiny.spade_generator(out)
    cfg = lp_tiny.config
    assert f_s.shape == (1, cfg.appearance.reshape_channel, cfg.appearance.reshape_depth, 64, 64)
    assert occlusion.shape == (1, 1, 64, 64) and deformation.shape == (1, cfg.appearance.reshape_depth, 64, 64, 3)
    assert image.shape == (1, 3, 512, 512) and 0 <= image.min() and image.max() <= 1


def test_download_fetches_the_official_layout(tmp_path, lp_tiny_weights, monkeypatch):
    import shutil

    import huggingface_hub

    from baselines.liveportrait.models import HUB_REPO, download

    calls = []

    def fake_snapshot_download(repo_id, local_dir, allow_patterns):
        calls.append((repo_id, allow_patterns))
        shutil.copytree(lp_tiny_weights, local_dir, dirs_exist_ok=True)
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    layout = download(tmp_path / "dl")
    assert calls[0][0] == HUB_REPO == "KwaiVGI/LivePortrait"
    assert "liveportrait/base_models/*.pth" in calls[0][1] and "insightface/models/buffalo_l/det_10g.onnx" in calls[0][1]
    assert layout.missing() == [] and LivePortraitModels.from_pretrained(tmp_path / "dl") is not None
