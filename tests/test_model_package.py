# This file is part of meas_extensions_deepdisc.
#
# Developed for the LSST Data Management System.
# This product includes software developed by the LSST Project
# (https://www.lsst.org).
# See the COPYRIGHT file at the top-level directory of this distribution
# for details of code ownership.
#
# This program is free software: you can redistribute it and/or modify
# it under the terms of the GNU General Public License as published by
# the Free Software Foundation, either version 3 of the License, or
# (at your option) any later version.
#
# This program is distributed in the hope that it will be useful,
# but WITHOUT ANY WARRANTY; without even the implied warranty of
# MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.  See the
# GNU General Public License for more details.
#
# You should have received a copy of the GNU General Public License
# along with this program.  If not, see <https://www.gnu.org/licenses/>.

"""The model package: exact round trips, hostile files, band checks, checkpoints and the Butler."""

from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lsst.meas.extensions.deepdisc.core.checkpoints import load_checkpoint_state_dict
from lsst.meas.extensions.deepdisc.core.model_package import (
    MANIFEST_MEMBER,
    METADATA_MEMBER,
    MODEL_MEMBER,
    PACKAGE_MEMBERS,
    WEIGHTS_MEMBER,
    BandMismatchError,
    ModelPackage,
    ModelPackageError,
    PackageLimits,
)
from lsst.meas.extensions.deepdisc.core.scaling import ScalingSpec
from lsst.meas.extensions.deepdisc.core.star_galaxy import (
    ReliabilityClassifier,
    StarGalaxyClassifier,
    feature_names,
    reliability_feature_names,
)

BANDS = ("g", "r", "i")


def _tiny_state_dict() -> dict[str, torch.Tensor]:
    """Tensors of many dtypes and layouts, including values that only a bit-exact format keeps."""
    generator = torch.Generator().manual_seed(1)
    base = torch.randn(4, 6, generator=generator)
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 1e-45, 3.0], dtype=torch.float64)
    return {
        "conv.weight": torch.randn(8, 3, 3, 3, generator=generator),
        "special": special,
        "half": torch.randn(5, generator=generator).half(),
        "bfloat": torch.randn(5, generator=generator).bfloat16(),
        "counts": torch.tensor([0, -1, 2**40], dtype=torch.int64),
        "small_ints": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "flags": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros((0, 3)),
        "transposed": base.t(),  # Not contiguous.
        "view_of_base": base[1:3],  # Shares storage with "base".
        "base": base,
    }


def _tiny_package(**changes: object) -> ModelPackage:
    config = {
        "format": "yacs",
        "config": {"MODEL": {"PIXEL_MEAN": [0.1, 0.2, 0.3], "RESNETS": {"DEPTH": 18}}},
        "architecture": "tiny",
        "bands": list(BANDS),
        "class_names": ["star", "galaxy"],
        "pixel_mean": [0.1, 0.2, 0.3],
        "pixel_std": [1.0, 2.0, 4.0],
    }
    kwargs: dict[str, object] = dict(
        name="tiny",
        version="2.1",
        model_config=config,
        state_dict=_tiny_state_dict(),
        bands=BANDS,
        scaling=ScalingSpec("lupton", {"Q": 10.0, "stretch": 0.5}, ("NO_DATA", "SAT")),
        class_names=("star", "galaxy"),
        pixel_mean=(0.1, 0.2, 0.3),
        pixel_std=(1.0, 2.0, 4.0),
        architecture="tiny",
        provenance={
            "training_data": "simulated DC2-like patches",
            "training_collections": ["u/someone/train"],
            "iterations": 1000,
            "metrics": {"AP": 41.5, "star_F1": 0.88},
            "created_utc": "2026-01-02T03:04:05+00:00",
        },
    )
    kwargs.update(changes)
    return ModelPackage(**kwargs)


def _raw_bytes(tensor: torch.Tensor) -> list[int]:
    return tensor.contiguous().reshape(-1).view(torch.uint8).tolist()


# ----------------------------------------------------------------------------------- round trips ---


def test_round_trip_preserves_every_tensor_bit_exactly_and_the_metadata(tmp_path: Path) -> None:
    package = _tiny_package()
    path = package.save(tmp_path / "tiny.deepdisc.zip")
    loaded = ModelPackage.load(path)

    assert set(loaded.state_dict) == set(package.state_dict)
    for key, tensor in package.state_dict.items():
        other = loaded.state_dict[key]
        assert other.dtype == tensor.dtype, key
        assert other.shape == tensor.shape, key
        assert _raw_bytes(other) == _raw_bytes(tensor), key
    assert loaded.metadata_dict() == package.metadata_dict()
    assert loaded.model_config == package.model_config
    assert loaded.scaling == package.scaling
    assert loaded.pixel_std == (1.0, 2.0, 4.0)
    assert loaded.provenance["metrics"] == {"AP": 41.5, "star_F1": 0.88}
    assert loaded == package
    assert ModelPackage.from_bytes(package.to_bytes()) == package


def test_writing_is_deterministic_and_has_exactly_the_four_members(tmp_path: Path) -> None:
    package = _tiny_package()
    blob = package.to_bytes()
    assert package.to_bytes() == blob
    assert package.save(tmp_path / "a.zip").read_bytes() == blob
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        assert archive.namelist() == list(PACKAGE_MEMBERS)
        manifest = yaml.safe_load(archive.read(MANIFEST_MEMBER))
        for name in (MODEL_MEMBER, METADATA_MEMBER, WEIGHTS_MEMBER):
            data = archive.read(name)
            assert manifest["members"][name] == {
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
    assert package.content_digest() == hashlib.sha256(manifest_bytes(blob)).hexdigest()
    changed = _tiny_package(version="2.2")
    assert changed != package
    assert changed.content_digest() != package.content_digest()


def manifest_bytes(blob: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        return archive.read(MANIFEST_MEMBER)


def test_save_refuses_a_name_without_the_package_suffix(tmp_path: Path) -> None:
    with pytest.raises(ModelPackageError, match="must end with"):
        _tiny_package().save(tmp_path / "model.pth")
    assert not list(tmp_path.iterdir())


def test_summary_and_description_name_the_essentials() -> None:
    package = _tiny_package()
    text = package.summary()
    for needle in ("'tiny'", "g r i", "0=star, 1=galaxy", "lupton", "Q=10.0", "training_data", "float32"):
        assert needle in text, needle
    description = package.describe()
    assert description["weights"]["tensors"] == len(package.state_dict)
    assert description["weights"]["values"] == sum(t.numel() for t in package.state_dict.values())
    assert description["content_sha256"] == package.content_digest()


# ------------------------------------------------------------------------------- construction ---


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "bad/name"}, "model name"),
        ({"name": ""}, "model name"),
        ({"bands": ("g", "g", "r")}, "duplicates"),
        ({"class_names": ()}, "must not be empty"),
        ({"pixel_std": (1.0, 0.0, 1.0)}, "positive"),
        ({"pixel_mean": (0.1, 0.2)}, "one number per band"),
        ({"model_config": {"format": "yacs", "hook": print}}, "plain data"),
        ({"state_dict": {"w": np.zeros(3)}}, "torch.Tensor"),
        ({"state_dict": {}}, "non-empty"),
        ({"provenance": {"created": object()}}, "plain data"),
        ({"format_version": 2}, "format version 2"),
        ({"scaling": {"name": "no-such-scaling"}}, "unknown scaling"),
        ({"bands": ("g", "r", "z")}, "disagree"),
        ({"pixel_mean": (0.0, 0.0, 0.0)}, "disagree"),
    ],
)
def test_invalid_content_is_refused_at_construction(changes: dict, message: str) -> None:
    with pytest.raises(ModelPackageError, match=message):
        _tiny_package(**changes)


# --------------------------------------------------------------------------------------- bands ---


def test_check_bands_names_both_lists_when_a_band_is_missing() -> None:
    package = _tiny_package()
    with pytest.raises(BandMismatchError) as info:
        package.check_bands(["r", "g"])
    message = str(info.value)
    assert "['g', 'r', 'i']" in message and "['r', 'g']" in message and "missing ['i']" in message
    assert isinstance(info.value, ModelPackageError) and isinstance(info.value, ValueError)


def test_check_bands_allows_extra_bands_unless_asked_not_to() -> None:
    package = _tiny_package()
    package.check_bands(["u", "g", "r", "i", "z", "y"])
    with pytest.raises(BandMismatchError, match=r"unexpected \['u', 'z'\]"):
        package.check_bands(["u", "g", "r", "i", "z"], allow_extra=False)
    with pytest.raises(BandMismatchError, match="repeated"):
        package.check_bands(["g", "r", "i", "g"])


def test_band_order_for_reorders_data_to_the_model_order() -> None:
    package = _tiny_package()
    available = ("z", "i", "g", "r")
    order = package.band_order_for(available)
    assert order == (2, 3, 1)
    cube = np.stack([np.full((2, 2), index) for index in range(len(available))])
    reordered = cube[list(order)]
    assert [available[int(plane[0, 0])] for plane in reordered] == list(BANDS)
    with pytest.raises(BandMismatchError, match="missing"):
        package.band_order_for(("g", "r"))


# ------------------------------------------------------------------------------ hostile packages ---


def _members(blob: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _zip(entries: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def _rehashed(members: dict[str, bytes], **manifest_changes: object) -> dict[str, bytes]:
    """Members with a manifest that matches them, so that checks after the hash check are reached."""
    members = {name: data for name, data in members.items() if name != MANIFEST_MEMBER}
    manifest = {
        "format": "deepdisc-model-package",
        "format_version": 1,
        "members": {
            name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            for name, data in members.items()
        },
    }
    manifest.update(manifest_changes)
    return {MANIFEST_MEMBER: yaml.safe_dump(manifest).encode(), **members}


def _replace(member: str, data: bytes, rehash: bool = True) -> Callable[[bytes, Path], bytes]:
    def mutate(blob: bytes, tmp_path: Path) -> bytes:
        members = _members(blob)
        members[member] = data
        if rehash:
            members = _rehashed(members)
        return _zip(list(members.items()))

    return mutate


def _add(name: str, data: bytes) -> Callable[[bytes, Path], bytes]:
    def mutate(blob: bytes, tmp_path: Path) -> bytes:
        return _zip([*_members(blob).items(), (name, data)])

    return mutate


def _drop_metadata(blob: bytes, tmp_path: Path) -> bytes:
    members = _members(blob)
    del members[METADATA_MEMBER]
    return _zip(list(_rehashed(members).items()))


def _duplicate_model(blob: bytes, tmp_path: Path) -> bytes:
    members = _members(blob)
    with pytest.warns(UserWarning, match="Duplicate name"):
        return _zip([*members.items(), (MODEL_MEMBER, members[MODEL_MEMBER])])


def _tamper_weights(blob: bytes, tmp_path: Path) -> bytes:
    members = _members(blob)
    weights = bytearray(members[WEIGHTS_MEMBER])
    weights[-1] ^= 0x01  # One bit of the last tensor's data; the manifest keeps the old hash.
    members[WEIGHTS_MEMBER] = bytes(weights)
    return _zip(list(members.items()))


def _manifest_lies_about_size(blob: bytes, tmp_path: Path) -> bytes:
    members = _members(blob)
    rehashed = _rehashed({k: v for k, v in members.items() if k != MANIFEST_MEMBER})
    manifest = yaml.safe_load(rehashed[MANIFEST_MEMBER])
    manifest["members"][MODEL_MEMBER]["size"] += 1
    rehashed[MANIFEST_MEMBER] = yaml.safe_dump(manifest).encode()
    return _zip(list(rehashed.items()))


def _format_version(version: object) -> Callable[[bytes, Path], bytes]:
    def mutate(blob: bytes, tmp_path: Path) -> bytes:
        members = {k: v for k, v in _members(blob).items() if k != MANIFEST_MEMBER}
        return _zip(list(_rehashed(members, format_version=version).items()))

    return mutate


def _zip_bomb(blob: bytes, tmp_path: Path) -> bytes:
    # 8 MiB of one byte deflates to ~8 KiB; the check must refuse it from the declared sizes alone.
    return _replace(MODEL_MEMBER, b"#" * (8 * 2**20))(blob, tmp_path)


def _python_tag_metadata(blob: bytes, tmp_path: Path) -> bytes:
    marker = tmp_path / "marker-python-tag"
    text = f"name: !!python/object/apply:builtins.open ['{marker}', 'w']\n"
    return _replace(METADATA_MEMBER, text.encode())(blob, tmp_path)


def _target_config(target: str, nested: bool) -> Callable[[bytes, Path], bytes]:
    def mutate(blob: bytes, tmp_path: Path) -> bytes:
        marker = tmp_path / "marker-target"
        config = yaml.safe_load(_members(blob)[MODEL_MEMBER])
        hostile: dict[str, object] = {"_target_": target}
        if target == "os.system":
            hostile["command"] = f"touch {marker}"
        else:
            hostile["_args_"] = [str(marker), "w"]
        config["format"] = "lazy"
        if nested:
            config["model"] = {"_target_": "torch.nn.Identity", "roi_heads": {"box_head": [hostile]}}
        else:
            config["model"] = hostile
        return _replace(MODEL_MEMBER, yaml.safe_dump(config).encode())(blob, tmp_path)

    return mutate


def _metadata_edit(key: str, value: object) -> Callable[[bytes, Path], bytes]:
    def mutate(blob: bytes, tmp_path: Path) -> bytes:
        metadata = yaml.safe_load(_members(blob)[METADATA_MEMBER])
        metadata[key] = value
        return _replace(METADATA_MEMBER, yaml.safe_dump(metadata, sort_keys=False).encode())(blob, tmp_path)

    return mutate


def _corrupt_compressed_model(blob: bytes, tmp_path: Path) -> bytes:
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        info = archive.getinfo(MODEL_MEMBER)
    # The local header is 30 bytes plus the name; the compressed stream follows.
    start = info.header_offset + 30 + len(info.filename)
    data = bytearray(blob)
    for offset in range(start + 2, start + min(info.compress_size, 40)):
        data[offset] ^= 0xFF
    return bytes(data)


HOSTILE_CASES = {
    "corrupt compressed data": (_corrupt_compressed_model, "is corrupt"),
    "pickle member": (_add("weights.pkl", pickle.dumps({"w": [1.0]})), r"unexpected member.*weights\.pkl"),
    "path traversal": (_add("../evil.yaml", b"x: 1\n"), r"'\.\./evil\.yaml'.*path traversal"),
    "absolute path": (_add("/tmp/evil.yaml", b"x: 1\n"), "absolute path"),
    "member in a directory": (_add("sub/model.yaml", b"x: 1\n"), "directories"),
    "duplicate member": (_duplicate_model, "appears more than once"),
    "missing member": (_drop_metadata, r"missing member.*metadata\.yaml"),
    "truncated zip": (lambda blob, tmp: blob[: len(blob) // 2], "not a readable zip"),
    "a pickle instead of a zip": (lambda blob, tmp: pickle.dumps({"model": 1}), "not a readable zip"),
    "tampered weight hash": (_tamper_weights, r"sha256 mismatch for member 'weights\.safetensors'"),
    "manifest size lie": (_manifest_lies_about_size, "manifest declares"),
    "newer format version": (_format_version(2), "format version 2 is not supported.*upgrade"),
    "format version as text": (_format_version("1"), "format version '1' is not supported"),
    "zip bomb": (_zip_bomb, "zip bomb"),
    "malformed YAML": (_replace(METADATA_MEMBER, b"bands: [g, r\n"), r"metadata\.yaml is not valid"),
    "YAML python tag": (_python_tag_metadata, r"metadata\.yaml is not valid \(safe\) YAML"),
    "YAML alias": (_replace(MODEL_MEMBER, b"a: &x [1, 2]\nb: *x\n"), "aliases are not allowed"),
    "YAML nested too deeply": (_replace(MODEL_MEMBER, b"[" * 600 + b"]" * 600), "nested too deeply"),
    "YAML duplicate key": (_replace(MODEL_MEMBER, b"format: yacs\nformat: lazy\n"), "duplicate key"),
    "not safetensors": (
        _replace(WEIGHTS_MEMBER, b"\x08" + b"\x00" * 7 + b"{}garbage"),
        "not a valid safetensors",
    ),
    "unknown metadata key": (_metadata_edit("run_this", "rm -rf /"), r"unknown keys \['run_this'\]"),
    "metadata and config disagree": (_metadata_edit("bands", ["u", "g", "r"]), "disagree"),
    "target os.system": (_target_config("os.system", nested=False), "refused _target_ 'os.system'"),
    "nested target builtins.open": (
        _target_config("builtins.open", nested=True),
        "refused _target_ 'builtins.open'",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE_CASES))
def test_hostile_or_corrupt_packages_are_refused_and_nothing_runs(case: str, tmp_path: Path) -> None:
    mutate, message = HOSTILE_CASES[case]
    blob = mutate(_tiny_package().to_bytes(), tmp_path)
    path = tmp_path / "hostile.zip"
    path.write_bytes(blob)
    with pytest.raises(ModelPackageError, match=message):
        ModelPackage.load(path)
    with pytest.raises(ModelPackageError, match=message):
        ModelPackage.from_bytes(blob)
    assert not list(tmp_path.glob("marker*")), "code from the package was executed"


def test_size_cap_is_checked_before_reading() -> None:
    blob = _tiny_package().to_bytes()
    with pytest.raises(ModelPackageError, match="over the cap of 100"):
        ModelPackage.from_bytes(blob, limits=PackageLimits(max_yaml_bytes=100))
    with pytest.raises(ModelPackageError, match=r"'weights\.safetensors' declares .* over the cap"):
        ModelPackage.from_bytes(blob, limits=PackageLimits(max_weights_bytes=1000))


def test_a_hostile_target_in_memory_is_refused_by_build_model(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    config = {
        "format": "lazy",
        "model": {"_target_": "os.system", "command": f"touch {marker}"},
        "num_bands": 3,
        "bands": list(BANDS),
        "class_names": ["star", "galaxy"],
        "pixel_mean": [0.1, 0.2, 0.3],
        "pixel_std": [1.0, 2.0, 4.0],
    }
    package = _tiny_package(model_config=config)
    with pytest.raises(ModelPackageError, match="refused _target_ 'os.system'"):
        package.build_model()
    with pytest.raises(ModelPackageError, match="refused _target_ 'os.system'"):
        ModelPackage.from_bytes(package.to_bytes())
    assert not marker.exists()


# ------------------------------------------------------------------------------- real models ---


@pytest.fixture(scope="module")
def compact() -> tuple[torch.nn.Module, ModelPackage]:
    """A randomly initialised compact model and its package (built once: ~2 s)."""
    from lsst.meas.extensions.deepdisc.core.models import ModelSpec, build_model_from_spec

    spec = ModelSpec(architecture="compact-R18-FPN", bands=BANDS, class_names=("star", "galaxy"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        model = build_model_from_spec(spec)
    package = ModelPackage.from_model(
        model, spec, ScalingSpec("lupton", {"Q": 10.0}), "compact", provenance={"iterations": 0}
    )
    return model, package


def _image(seed: int = 0) -> torch.Tensor:
    return torch.rand(len(BANDS), 32, 32, generator=torch.Generator().manual_seed(seed))


def test_from_model_records_spec_and_config(compact: tuple[torch.nn.Module, ModelPackage]) -> None:
    model, package = compact
    assert package.bands == BANDS and package.class_names == ("star", "galaxy")
    assert package.architecture == "compact-R18-FPN"
    assert package.pixel_mean == (0.0, 0.0, 0.0) and package.pixel_std == (1.0, 1.0, 1.0)
    assert "created_utc" in package.provenance and package.provenance["iterations"] == 0
    assert set(package.state_dict) == set(model.state_dict())
    # A snapshot: training the live model further does not change the package.
    first = next(iter(package.state_dict))
    before = package.state_dict[first].clone()
    with torch.no_grad():
        model.state_dict()[first].add_(1.0)
    assert torch.equal(package.state_dict[first], before)
    with torch.no_grad():
        model.state_dict()[first].copy_(before)  # Exactly as before, for the tests that share the model.


def test_reloaded_package_gives_identical_outputs(compact: tuple[torch.nn.Module, ModelPackage]) -> None:
    model, package = compact
    reloaded = ModelPackage.from_bytes(package.to_bytes())
    rebuilt = reloaded.build_model("cpu")
    assert not rebuilt.training
    image = _image()
    with torch.no_grad():
        features = model.backbone(image[None])
        features_again = rebuilt.backbone(image[None])
        outputs = model([{"image": image, "height": 32, "width": 32}])[0]["instances"]
        outputs_again = rebuilt([{"image": image, "height": 32, "width": 32}])[0]["instances"]
    assert features.keys() == features_again.keys()
    for level in features:
        assert torch.equal(features[level], features_again[level]), level
    assert len(outputs) == len(outputs_again)
    assert torch.equal(outputs.pred_boxes.tensor, outputs_again.pred_boxes.tensor)
    assert torch.equal(outputs.scores, outputs_again.scores)
    assert torch.equal(outputs.pred_classes, outputs_again.pred_classes)
    assert torch.equal(outputs.pred_masks, outputs_again.pred_masks)
    # The comparison can fail: a model with other random weights sees the same image differently.
    from lsst.meas.extensions.deepdisc.core.models import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(12)
        other = build_model(package.model_config)
    with torch.no_grad():
        assert not torch.equal(other.backbone(image[None])["p2"], features["p2"])


def test_weights_that_do_not_fit_the_model_are_named(compact: tuple[torch.nn.Module, ModelPackage]) -> None:
    _, package = compact
    state = dict(package.state_dict)
    keys = list(state)
    renamed, reshaped = keys[0], keys[1]
    state["not.in.model"] = state.pop(renamed)
    state[reshaped] = torch.zeros(7)
    broken = ModelPackage(
        name="broken",
        version="1",
        model_config=package.model_config,
        state_dict=state,
        bands=package.bands,
        scaling=package.scaling,
        class_names=package.class_names,
    )
    with pytest.raises(ModelPackageError) as info:
        ModelPackage.from_bytes(broken.to_bytes()).build_model()
    message = str(info.value)
    assert f"missing key(s): {renamed}" in message
    assert "unexpected key(s): not.in.model" in message
    assert f"{reshaped} (model [" in message and "weights [7]" in message


def test_class_names_must_match_the_config(compact: tuple[torch.nn.Module, ModelPackage]) -> None:
    model, package = compact
    with pytest.raises(ModelPackageError, match="disagree"):
        ModelPackage.from_model(
            model, package.model_config, "lupton", "x", bands=BANDS, class_names=("star", "galaxy", "qso")
        )


# -------------------------------------------------------------------------------- checkpoints ---


def _checkpoint_state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return {"backbone.conv.weight": torch.randn(4, 3, generator=generator), "head.bias": torch.arange(4.0)}


def test_detectron2_checkpoint_with_ddp_prefix(tmp_path: Path) -> None:
    state = _checkpoint_state()
    path = tmp_path / "model_final.pth"
    optimizer = {"state": {}, "param_groups": [{"lr": 0.01, "params": [0, 1]}]}
    torch.save(
        {"model": {f"module.{k}": v for k, v in state.items()}, "optimizer": optimizer, "iteration": 4999},
        path,
    )
    weights, info = load_checkpoint_state_dict(path)
    assert set(weights) == set(state)
    assert all(torch.equal(weights[k], state[k]) for k in state)
    assert info == {
        "source_checkpoint": "model_final.pth",
        "source_checkpoint_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "iterations": 4999,
    }


def test_safetensors_checkpoint(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = _checkpoint_state()
    path = tmp_path / "weights.safetensors"
    save_file(state, str(path))
    weights, info = load_checkpoint_state_dict(path)
    assert all(torch.equal(weights[k], state[k]) for k in state) and set(weights) == set(state)
    assert "iterations" not in info


class _Exploit:
    """Unpickling this calls ``open(marker, "w")``: what a hostile checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def test_checkpoint_with_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "hostile.pth"
    torch.save({"model": _checkpoint_state(), "hook": _Exploit(marker)}, path)
    with pytest.raises(ModelPackageError, match="refused checkpoint"):
        load_checkpoint_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"model": {"w": [1.0, 2.0]}}, "not tensors"),
        ({"model": {}}, "no state dict"),
        ([torch.zeros(2)], "no state dict"),
    ],
)
def test_checkpoints_without_a_state_dict_are_refused(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "odd.pt"
    torch.save(content, path)
    with pytest.raises(ModelPackageError, match=message):
        load_checkpoint_state_dict(path)


def test_corrupt_checkpoint_files_are_refused(tmp_path: Path) -> None:
    bad_torch = tmp_path / "bad.pth"
    bad_torch.write_bytes(zlib.compress(b"not a checkpoint"))
    with pytest.raises(ModelPackageError, match=str(bad_torch)):
        load_checkpoint_state_dict(bad_torch)
    bad_safetensors = tmp_path / "bad.safetensors"
    bad_safetensors.write_bytes(b"\x00" * 16)
    with pytest.raises(ModelPackageError, match="not a valid safetensors"):
        load_checkpoint_state_dict(bad_safetensors)


# ------------------------------------------------------------------------------------ Butler ---


def test_butler_put_get_and_idempotent_ingest(tmp_path: Path) -> None:
    from lsst.daf.butler import Butler

    from lsst.meas.extensions.deepdisc.butler.model_formatter import (
        MODEL_DATASET_TYPE,
        MODEL_STORAGE_CLASS,
        DeepDiscModelFormatter,
        ingest_model_package,
        model_run_collection,
        register_model_dataset_type,
    )

    Butler.makeRepo(str(tmp_path / "repo"))
    package = _tiny_package()
    with Butler.from_config(str(tmp_path / "repo"), writeable=True) as butler:
        dataset_type = register_model_dataset_type(butler)
        assert dataset_type.name == MODEL_DATASET_TYPE == "deepdisc_model"
        assert dataset_type.storageClass_name == MODEL_STORAGE_CLASS
        assert dataset_type.dimensions.names == set()
        assert register_model_dataset_type(butler) == dataset_type  # Registering again is harmless.

        run = model_run_collection(package.name)
        assert run == "pretrained_models/tiny"
        butler.collections.register(run)
        ref = butler.put(package, MODEL_DATASET_TYPE, run=run)
        assert butler.get(ref) == package
        uri = butler.getURI(ref)
        assert uri.getExtension() == ".zip"
        assert ModelPackage.load(uri.ospath) == package
        assert butler.get(MODEL_DATASET_TYPE, collections=run) == package

        same = ingest_model_package(butler, _tiny_package())
        assert (same.status, same.ref.id, same.run) == ("unchanged", ref.id, run)
        other = _tiny_package(version="3.0")
        with pytest.raises(ModelPackageError, match="already holds a different deepdisc_model"):
            ingest_model_package(butler, other)
        replaced = ingest_model_package(butler, other, replace=True)
        assert replaced.status == "replaced"
        assert butler.get(MODEL_DATASET_TYPE, collections=run) == other
        refs = list(butler.registry.queryDatasets(MODEL_DATASET_TYPE, collections=run))
        assert len(refs) == 1
        fresh = ingest_model_package(butler, other, name="copy")
        assert (fresh.status, fresh.run) == ("ingested", "pretrained_models/copy")

    with pytest.raises(TypeError, match="writes ModelPackage"):
        DeepDiscModelFormatter.to_bytes(object.__new__(DeepDiscModelFormatter), {"not": "a package"})


# ----------------------------------------------------------------------------- operating point ---


def test_score_threshold_round_trips_and_old_packages_have_none(tmp_path: Path) -> None:
    package = _tiny_package(score_threshold=0.35)
    loaded = ModelPackage.load(package.save(tmp_path / "tiny.deepdisc.zip"))
    assert loaded.score_threshold == 0.35 and loaded == package
    assert "score threshold: 0.35" in loaded.summary()
    plain = _tiny_package()
    assert plain.score_threshold is None and "score_threshold" not in plain.metadata_dict()
    assert ModelPackage.from_bytes(plain.to_bytes()).score_threshold is None
    for bad in (1.5, -0.1, "high", True):
        with pytest.raises(ModelPackageError, match="score_threshold"):
            _tiny_package(score_threshold=bad)


def test_artifact_binning_round_trips_and_is_shown(tmp_path: Path) -> None:
    package = _tiny_package(artifact_binning=4)
    loaded = ModelPackage.load(package.save(tmp_path / "tiny.deepdisc.zip"))
    assert loaded.artifact_binning == 4 and loaded == package
    assert "binned 4x" in loaded.summary()
    assert "artifact_binning" not in _tiny_package().metadata_dict()
    for bad in (1, 2.0, True, "4"):
        with pytest.raises(ModelPackageError, match="artifact_binning"):
            _tiny_package(artifact_binning=bad)
    thresholded = _tiny_package(artifact_binning=4, artifact_score_threshold=0.3)
    assert ModelPackage.from_bytes(thresholded.to_bytes()).artifact_score_threshold == 0.3
    assert "binned 4x (score >= 0.3)" in thresholded.summary()
    with pytest.raises(ModelPackageError, match="needs artifact_binning"):
        _tiny_package(artifact_score_threshold=0.3)
    with pytest.raises(ModelPackageError, match="artifact_score_threshold"):
        _tiny_package(artifact_binning=4, artifact_score_threshold=1.5)


def test_build_model_sets_the_score_threshold_lower_or_higher(
    compact: tuple[torch.nn.Module, ModelPackage],
) -> None:
    _, package = compact
    thresholds = lambda model: {  # noqa: E731
        module.test_score_thresh for module in model.modules() if hasattr(module, "test_score_thresh")
    }
    default = thresholds(package.build_model("cpu"))
    assert len(default) == 1
    low = package.build_model("cpu", score_threshold=0.01)
    high = package.build_model("cpu", score_threshold=0.9)
    assert thresholds(low) == {0.01} and thresholds(high) == {0.9}
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        package.build_model("cpu", score_threshold=2.0)


# ----------------------------------------------------------------------- star-galaxy classifier ---


def _star_galaxy(bands: tuple[str, ...] = ("g", "r"), min_bands: int | None = None) -> StarGalaxyClassifier:
    rng = np.random.default_rng(5)
    n = len(feature_names(bands))
    return StarGalaxyClassifier(
        bands=bands,
        mean=rng.normal(size=n),
        scale=rng.uniform(0.5, 2.0, n),
        networks=[
            ([rng.normal(size=(n, 4)), rng.normal(size=(4, 1))], [rng.normal(size=4), rng.normal(size=1)])
        ],
        threshold=0.35,
        min_bands=min_bands,
        provenance={"validation_star_f1_i<24": 0.93},
    )


def test_a_star_galaxy_classifier_travels_in_the_package_and_is_checked_against_the_model() -> None:
    classifier = _star_galaxy()
    package = _tiny_package(star_galaxy=classifier)
    copy = ModelPackage.from_bytes(package.to_bytes())
    assert copy == package
    assert [c.to_dict() for c in copy.star_galaxy] == [classifier.to_dict()]
    assert "star/galaxy    : PSF-matched classifier on g r, star threshold 0.35" in copy.summary()
    assert _tiny_package().star_galaxy is None and "star/galaxy" not in _tiny_package().summary()
    with pytest.raises(ModelPackageError, match=r"bands \['z'\] that the model does not have"):
        _tiny_package(star_galaxy=_star_galaxy(("g", "z")))
    other_classes = _tiny_package().model_config
    other_classes["class_names"] = ["point", "extended"]
    with pytest.raises(ModelPackageError, match="classes 'star' and 'galaxy'"):
        _tiny_package(star_galaxy=classifier, class_names=("point", "extended"), model_config=other_classes)
    broken = {**classifier.to_dict(), "mean": [0.0]}
    with pytest.raises(ModelPackageError, match=r"star_galaxy\[0\]: .*standardisation"):
        _tiny_package(star_galaxy=broken)


def test_the_first_star_galaxy_classifier_the_measured_bands_allow_is_used() -> None:
    full, subsets = _star_galaxy(("g", "r", "i")), _star_galaxy(("g", "r", "i"), min_bands=2)
    package = ModelPackage.from_bytes(_tiny_package(star_galaxy=[full, subsets]).to_bytes())
    assert package.star_galaxy_for(["g", "r", "i"]).min_bands == 3
    assert package.star_galaxy_for(["r", "i"]).min_bands == 2
    assert package.star_galaxy_for(["i"]) is None
    assert "on g r i (any 2+), star threshold 0.35" in package.summary()
    assert _tiny_package().star_galaxy_for(["g", "r", "i"]) is None


def _reliability(bands: tuple[str, ...] = ("g", "r"), min_bands: int | None = None) -> ReliabilityClassifier:
    star_galaxy = _star_galaxy(bands, min_bands)
    n = len(reliability_feature_names(bands))
    rng = np.random.default_rng(6)
    return ReliabilityClassifier(
        bands=bands,
        mean=rng.normal(size=n),
        scale=rng.uniform(0.5, 2.0, n),
        networks=[([rng.normal(size=(n, 1))], [rng.normal(size=1)])],
        threshold=0.8,
        min_bands=star_galaxy.min_bands,
        network_threshold=0.25,
        provenance={"validation_purity": 0.985},
    )


def test_reliability_classifiers_travel_in_the_package_and_are_checked_against_the_model() -> None:
    full, subsets = _reliability(("g", "r", "i")), _reliability(("g", "r", "i"), min_bands=2)
    package = _tiny_package(reliability=[full, subsets], star_galaxy=_star_galaxy(("g", "r", "i")))
    copy = ModelPackage.from_bytes(package.to_bytes())
    assert copy == package
    assert [c.to_dict() for c in copy.reliability] == [full.to_dict(), subsets.to_dict()]
    assert copy.reliability_for(["g", "r", "i"]).min_bands == 3
    assert copy.reliability_for(["g", "i"]).min_bands == 2
    assert copy.reliability_for(["i"]) is None
    assert (
        "reliability    : PSF-matched classifier on g r i of detections scoring >= 0.25, keeps reliability "
        ">= 0.8, validation_purity 0.985" in copy.summary()
    )
    assert _tiny_package().reliability is None and "reliability" not in _tiny_package().summary()
    with pytest.raises(ModelPackageError, match=r"reliability\[0\] reads bands \['z'\]"):
        _tiny_package(reliability=_reliability(("g", "z")))
    with pytest.raises(ModelPackageError, match=r"reliability\[0\] must be a ReliabilityClassifier"):
        _tiny_package(reliability=[_star_galaxy()])
    with pytest.raises(ModelPackageError, match=r"star_galaxy\[0\]: not a star-galaxy classifier"):
        _tiny_package(star_galaxy=[full.to_dict()])
