"""The converter refuses bad input with one clear error naming every problem."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from prx_jax import load_transformer
from prx_jax.convert.__main__ import main as convert_main
from prx_jax.convert.errors import ConversionError
from prx_jax.convert.safetensors_io import SafetensorsError
from prx_jax.testing import FAMILIES, random_diffusers_transformer

WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("src")
    random_diffusers_transformer(FAMILIES["latent-flux"], seed=7).save_pretrained(folder)
    return folder, load_file(folder / WEIGHTS), json.loads((folder / "config.json").read_text())


def _variant(tmp_path, source, tensors=None, config=None):
    folder, base_tensors, base_config = source
    save_file(base_tensors if tensors is None else tensors, tmp_path / WEIGHTS)
    (tmp_path / "config.json").write_text(json.dumps(base_config if config is None else config))
    return tmp_path


def test_missing_extra_and_misshaped_keys_all_in_one_error(tmp_path, source):
    t = dict(source[1])
    del t["txt_in.bias"]
    t["blocks.0.extra.weight"] = np.zeros((3,), np.float32)
    t["img_in.weight"] = np.zeros((5, 5), np.float32)
    with pytest.raises(ConversionError) as e:
        load_transformer(_variant(tmp_path, source, tensors=t))
    msg = str(e.value)
    assert "missing (1)" in msg and "txt_in.bias" in msg
    assert "unexpected (1)" in msg and "blocks.0.extra.weight" in msg
    assert "mis-shaped (1)" in msg and "img_in.weight: source (5, 5)" in msg


def test_unsupported_config_field(tmp_path, source):
    cfg = {**source[2], "use_sprint": True}
    with pytest.raises(ValueError, match=r"unsupported PRX config field\(s\) \['use_sprint'\]"):
        load_transformer(_variant(tmp_path, source, config=cfg))


def test_wrong_class_name(tmp_path, source):
    cfg = {**source[2], "_class_name": "FluxTransformer2DModel"}
    with pytest.raises(ValueError, match="FluxTransformer2DModel"):
        load_transformer(_variant(tmp_path, source, config=cfg))


def test_truncated_file(tmp_path, source):
    folder = _variant(tmp_path, source)
    data = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(data[: len(data) - 100])
    with pytest.raises(SafetensorsError, match="truncated"):
        load_transformer(folder)
    (folder / WEIGHTS).write_bytes(data[:5])
    with pytest.raises(SafetensorsError, match="truncated"):
        load_transformer(folder)


def test_non_floating_dtype(tmp_path, source):
    t = dict(source[1])
    t["txt_in.bias"] = t["txt_in.bias"].astype(np.int32)
    with pytest.raises(ConversionError, match=r"not floating \(1\)[\s\S]*txt_in.bias: I32"):
        load_transformer(_variant(tmp_path, source, tensors=t))


def test_pickle_is_never_loaded(tmp_path, source):
    (tmp_path / "config.json").write_text(json.dumps(source[2]))
    (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(FileNotFoundError, match="pickle files are never loaded"):
        load_transformer(tmp_path)


def test_cli_reports_errors_and_keeps_existing_output(tmp_path, source, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    assert convert_main(["import", str(source[0]), str(out)]) == 2
    assert (out / "precious.txt").read_text() == "keep"
    t = dict(source[1])
    del t["txt_in.bias"]
    bad = tmp_path / "bad"
    bad.mkdir()
    assert (
        convert_main(["import", str(_variant(bad, source, tensors=t)), str(tmp_path / "o2")]) == 1
    )
    assert "txt_in.bias" in capsys.readouterr().err
