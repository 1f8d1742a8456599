"""`python -m prx_jax.prepare` over a mixed folder, a WebDataset tar and manifests."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import MIXED_FOLDER, jpeg_bytes, png_bytes, smooth_image
from PIL import Image

from prx_jax import prepare as prepare_cli
from prx_jax.data import records
from prx_jax.data.preparation import PrepareOptions, prepare

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--resolution", "64", "--patch-size", "16", "--min-side", "24", "--quiet"]
SMALL_OPTS = PrepareOptions(resolution=64, patch_size=16, min_side=24)


def _all_records(out: Path) -> list[dict]:
    return [
        records.unpack(r) for shards in records.list_shards(out).values()
        for s in shards for r in records.read_shard(s)
    ]  # fmt: skip


def test_mixed_folder_counts_every_bad_kind_once(mixed_folder, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "prx_jax.prepare", str(mixed_folder), str(out), *SMALL,
         "--workers", "2", "--chunk-size", "7"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    expected = {r: 1 for r in MIXED_FOLDER.values() if r}
    assert manifest["skipped"] == expected
    kept = sorted(k for k, r in MIXED_FOLDER.items() if r is None)
    recs = _all_records(out)
    assert sorted(r["key"] for r in recs) == kept
    assert manifest["num_records"] == len(kept) == sum(manifest["buckets"].values())
    assert manifest["caption_keys"] == ["caption", "prompt"]
    assert "skipped  10" in proc.stdout and "decompression_bomb" in proc.stdout
    for r in recs:
        img = Image.open(io.BytesIO(r["image"]))
        assert img.mode == "RGB" and img.size == (r["width"], r["height"])
        assert img.format == "JPEG"
    by_key = {r["key"]: r for r in recs}
    rotated = by_key["b_exif_rotated.jpg"]  # stored 64x40, displayed 40x64
    assert (rotated["original_width"], rotated["original_height"]) == (40, 64)
    assert (rotated["width"], rotated["height"]) == (48, 80)
    assert by_key["a_good4_json.png"]["captions"] == {"caption": "json caption", "prompt": "p4"}
    # The palette image's transparent index is composited on white.
    pal = np.asarray(Image.open(io.BytesIO(by_key["b_palette.png"]["image"])))
    assert pal.reshape(-1, 3).max(0).min() >= 240


def test_rerun_resumes_and_skips_finished_chunks(mixed_folder, tmp_path):
    out = tmp_path / "out"
    opts = PrepareOptions(resolution=64, patch_size=16, min_side=24, chunk_size=6)
    first = prepare(str(mixed_folder), out, opts, progress=False)
    shards = {p: p.read_bytes() for p in out.rglob(f"*{records.SHARD_SUFFIX}")}
    # Simulate a crash in the middle of chunk 0: its marker and one of its shards are gone.
    (out / "_prepare" / "chunk-00000.json").unlink()
    lost = next(p for p in shards if "shard-00000" in p.name)
    lost.unlink()
    mtimes = {p: p.stat().st_mtime_ns for p in shards if p != lost}
    second = prepare(str(mixed_folder), out, opts, progress=False)
    assert lost.read_bytes() == shards[lost]
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items() if "shard-00000" not in p.name)
    keep = ("num_records", "buckets", "skipped")
    assert {k: first[k] for k in keep} == {k: second[k] for k in keep}
    with pytest.raises(ValueError, match="different source/options"):
        prepare(
            str(mixed_folder), out, PrepareOptions(resolution=128, patch_size=16), progress=False
        )


def test_webdataset_tar(tmp_path):
    tar_path = tmp_path / "train-0000.tar"
    with tarfile.open(tar_path, "w") as tar:
        for i in range(5):
            meta = {"prompt": f"prompt {i}", "enhanced_prompt": f"long prompt {i}", "id": i}
            members = {f"{i:06d}.jpg": jpeg_bytes(smooth_image(100 + i, 64, 48 + 4 * i)),
                       f"{i:06d}.json": json.dumps(meta).encode()}  # fmt: skip
            if i == 4:
                members[f"{i:06d}.jpg"] = b"garbage"
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "out"
    assert prepare_cli.main([str(tmp_path / "*.tar"), str(out), *SMALL]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_records"] == 4 and manifest["skipped"] == {"unreadable_image": 1}
    assert manifest["caption_keys"] == ["enhanced_prompt", "prompt"]
    recs = sorted(_all_records(out), key=lambda r: r["key"])
    assert recs[0]["captions"] == {"prompt": "prompt 0", "enhanced_prompt": "long prompt 0"}
    assert recs[0]["key"] == "train-0000.tar/000000"


def test_parquet_manifest_with_bytes_and_paths(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    (tmp_path / "imgs").mkdir()
    rows = []
    for i in range(6):
        img = smooth_image(200 + i, 56, 40)
        if i % 2:
            rows.append({"image": {"bytes": png_bytes(img), "path": None}, "caption": f"c{i}",
                         "caption_short": f"s{i}"})  # fmt: skip
        else:
            img.save(tmp_path / "imgs" / f"{i}.png")
            rows.append({"image": {"bytes": None, "path": f"imgs/{i}.png"}, "caption": f"c{i}",
                         "caption_short": "" if i == 2 else f"s{i}"})  # fmt: skip
    rows[5]["caption"] = rows[5]["caption_short"] = ""
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    out = tmp_path / "out"
    manifest = prepare(str(tmp_path / "train.parquet"), out, SMALL_OPTS, progress=False)
    assert manifest["num_records"] == 5 and manifest["skipped"] == {"empty_caption": 1}
    assert manifest["caption_keys"] == ["caption", "caption_short"]
    assert {r["captions"]["caption"] for r in _all_records(out)} == {f"c{i}" for i in range(5)}


def test_jsonl_csv_manifests_and_saved_dataset(tmp_path):
    for i in range(3):
        smooth_image(300 + i).save(tmp_path / f"{i}.png")
    lines = [json.dumps({"file_name": f"{i}.png", "text": f"t{i}"}) for i in range(3)]
    (tmp_path / "m.jsonl").write_text("\n".join(lines))
    (tmp_path / "m.csv").write_text("path,caption\n" + "".join(f"{i}.png,c{i}\n" for i in range(3)))
    for name in ("m.jsonl", "m.csv"):
        man = prepare(str(tmp_path / name), tmp_path / f"out_{name}", SMALL_OPTS, progress=False)
        assert man["num_records"] == 3, name
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict(
        {"image": [str(tmp_path / f"{i}.png") for i in range(3)], "prompt": ["a", "b", ""]},
        features=datasets.Features({"image": datasets.Image(), "prompt": datasets.Value("string")}),
    )
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "saved"))
    man = prepare(str(tmp_path / "saved"), tmp_path / "out_saved", SMALL_OPTS, progress=False)
    assert man["num_records"] == 2 and man["skipped"] == {"empty_caption": 1}


def test_demo_source_and_png_output(tmp_path):
    opts = PrepareOptions(resolution=64, patch_size=16, min_side=24, image_format="png",
                          near_dup_threshold=-1)  # fmt: skip
    man = prepare("demo:12", tmp_path / "out", opts, progress=False)
    assert man["num_records"] == 12 and man["skipped"] == {}
    assert set(man["buckets"]) == {"bucket_48x80", "bucket_64x64", "bucket_80x48"}
    assert all(r["format"] == "png" for r in _all_records(tmp_path / "out"))
