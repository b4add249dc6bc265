"""The model package: one directory with everything a back end and ``llmacc verify`` need.

    PACKAGE/manifest.json   versions, accelerator config, host interface, file checksums,
                            the image segments and the program index
    PACKAGE/image.bin       external-memory image (weight tiles, META records, tables)
    PACKAGE/programs.bin    every bucket's instruction words, back to back
    PACKAGE/intref.pt       the integer reference model (tensors only; loaded weights-only)
    PACKAGE/tokenizer.*     the tokenizer, when one was given (.bin, .model, or .gguf: a
                            GGUF model's tokenizer metadata alone)

Loading checks the manifest's own digest (a SHA-256 over its canonical JSON, which holds every
file's SHA-256: an edited manifest or a swapped file is refused), the format and ISA versions,
each file's size and SHA-256, the configuration's fingerprint and every instruction word, and
names the first thing that does not match.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import torch

from compiler.compile import CompiledModel, HostInterface
from compiler.lower import Program
from compiler.memory_plan import Region
from llmacc import __version__, isa
from llmacc.config import AccelConfig, ConfigError
from llmacc.paths import check_output_dir
from quant import intref
from quant.tokenizer import STORED_SUFFIXES, stored_form

FORMAT = "llmacc-package"
FORMAT_VERSION = 5  #: 2: the manifest carries its own digest; 3: logits in vocabulary slices;
#: 4: weight streams pre-skewed where only streams feed the lanes (u280); 5: a pass's rows
#: interleaved over the collector ways (``layout.pass_row``)
FILES = ("image.bin", "programs.bin", "intref.pt")


class PackageError(ValueError):
    """A package that is missing, truncated, corrupted or from another version."""


def _sha(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def manifest_digest(manifest: dict) -> str:
    """SHA-256 of the manifest's canonical JSON without its ``digest`` field."""
    body = {k: v for k, v in manifest.items() if k != "digest"}
    return _sha(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def check_output(path: str | Path, force: bool = True) -> Path:
    """Refuse, before any work, an output path that :func:`save` could not or should not
    write: an existing file, a directory that is not a package, an existing package unless
    ``force``, or a place where no directory can be made."""
    out = Path(path)
    if out.is_dir():
        if (out / "manifest.json").is_file():
            if not force:
                raise PackageError(f"{out}: a package is there already; give --force to "
                                   "replace it")
        elif any(out.iterdir()):
            raise PackageError(f"{out}: exists and is not a package; refusing to overwrite it")
    try:  # also refuses a file there, or one on the way
        return check_output_dir(out)
    except ValueError as exc:
        raise PackageError(str(exc)) from None


def save(cm: CompiledModel, path: str | Path, scheme: str = "", tokenizer: str | Path | None = None,
         source: str = "", force: bool = True) -> Path:
    """Write ``cm`` as a package directory. It is written beside ``path`` first and moved in
    place when complete; an existing directory is replaced only if it is a package (and
    ``force``)."""
    out = check_output(path, force)
    image, segments = bytearray(), []
    for region, blob in cm.image:
        segments.append({"chan": region.chan, "addr": region.addr, "bytes": len(blob),
                         "offset": len(image)})
        image += blob
    programs, index = bytearray(), []
    for (kind, length), prog in sorted(cm.programs.items()):
        blob = prog.blob
        index.append({"kind": kind, "length": length, "chunk": prog.chunk,
                      "offset": len(programs), "bytes": len(blob), "sha256": _sha(blob)})
        programs += blob
    state = io.BytesIO()
    torch.save(intref.to_state(cm.model), state)
    blobs = {"image.bin": bytes(image), "programs.bin": bytes(programs),
             "intref.pt": state.getvalue()}
    if tokenizer is not None:
        name, blob = stored_form(tokenizer)
        blobs[name] = blob
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        for name, blob in blobs.items():
            (tmp / name).write_bytes(blob)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise PackageError(f"{out}: cannot write the package ({exc.strerror}: "
                           f"{exc.filename})") from None
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "isa_version": isa.ISA_VERSION,
        "llmacc_version": __version__, "scheme": scheme, "source": source,
        "config": cm.config.to_dict(), "fingerprint": cm.config.fingerprint(),
        "host": cm.host.to_dict(), "compile_seconds": cm.seconds,
        "files": {n: {"bytes": len(b), "sha256": _sha(b)} for n, b in blobs.items()},
        "image": segments, "programs": index,
    }
    manifest["digest"] = manifest_digest(manifest)
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _read(root: Path, name: str, entry: dict) -> bytes:
    path = root / name
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise PackageError(f"{path}: cannot read ({exc.strerror})") from None
    if len(blob) != entry["bytes"]:
        raise PackageError(f"{path}: {len(blob)} bytes, the manifest says {entry['bytes']} "
                           "(truncated or replaced)")
    if _sha(blob) != entry["sha256"]:
        raise PackageError(f"{path}: SHA-256 mismatch (the file is corrupted)")
    return blob


def load(path: str | Path) -> tuple[CompiledModel, dict]:
    """The compiled model of a package and its manifest."""
    root = Path(path)
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except OSError as exc:
        raise PackageError(f"{root}: not a package ({exc.strerror}: manifest.json)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackageError(f"{root / 'manifest.json'}: malformed ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PackageError(f"{root}: manifest.json is not an {FORMAT} manifest")
    for key, want in (("format_version", FORMAT_VERSION), ("isa_version", isa.ISA_VERSION)):
        if manifest.get(key) != want:
            raise PackageError(f"{root}: {key} {manifest.get(key)}, this llmacc reads {want}; "
                               "recompile the package")
    if manifest.get("digest") != manifest_digest(manifest):
        raise PackageError(f"{root / 'manifest.json'}: its digest does not match its contents "
                           "(the manifest was edited); recompile the package")
    try:
        files = manifest["files"]
        missing = [n for n in FILES if n not in files]
        if missing:
            raise PackageError(f"{root}: the manifest lists no {', '.join(missing)}")
        blobs = {n: _read(root, n, files[n]) for n in files}
        cfg = AccelConfig.from_dict(manifest["config"])
        if cfg.fingerprint() != manifest["fingerprint"]:
            raise PackageError(f"{root}: configuration fingerprint mismatch")
        host = HostInterface.from_dict(manifest["host"])
        image_blob = blobs["image.bin"]
        image = []
        for seg in manifest["image"]:
            chunk = image_blob[seg["offset"]:seg["offset"] + seg["bytes"]]
            if len(chunk) != seg["bytes"]:
                raise PackageError(f"{root}: image segment at {seg['offset']} runs past image.bin")
            image.append((Region(seg["chan"], seg["addr"], seg["bytes"]), chunk))
        programs = {}
        pblob = blobs["programs.bin"]
        for entry in manifest["programs"]:
            blob = pblob[entry["offset"]:entry["offset"] + entry["bytes"]]
            if len(blob) != entry["bytes"] or _sha(blob) != entry["sha256"]:
                raise PackageError(f"{root}: {entry['kind']} program {entry['length']} does not "
                                   "match its checksum")
            try:
                insns = isa.decode_program(blob)
            except isa.IllegalInstruction as exc:
                raise PackageError(f"{root}: {entry['kind']} program {entry['length']}: "
                                   f"{exc}") from None
            programs[(entry["kind"], entry["length"])] = Program(
                entry["kind"], entry["length"], entry["chunk"], insns)
        try:
            state = torch.load(io.BytesIO(blobs["intref.pt"]), weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
            raise PackageError(f"{root / 'intref.pt'}: unreadable ({exc})") from None
        model = intref.from_state(state)
    except (KeyError, TypeError) as exc:
        raise PackageError(f"{root}: manifest.json lacks or mistypes {exc}") from None
    except ConfigError as exc:
        raise PackageError(f"{root}: {exc}") from None
    cm = CompiledModel(cfg, model, host, image, programs, manifest.get("compile_seconds", 0.0))
    return cm, manifest


def tokenizer_path(root: str | Path) -> Path | None:
    """The package's tokenizer (checked by :func:`load`), if it has one."""
    found = [p for p in (Path(root) / f"tokenizer{suffix}" for suffix in STORED_SUFFIXES)
             if p.is_file()]
    return found[0] if found else None
