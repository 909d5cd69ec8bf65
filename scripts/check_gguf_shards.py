#!/usr/bin/env python3
"""Independent check of `shardswarm split` output with the PyPI `gguf` reader (llama.cpp's gguf-py).

Usage: check_gguf_shards.py DIR [--source MODEL.gguf]

Opens every shard listed in DIR/manifest.json with gguf.GGUFReader and checks: file size and
SHA-256 against the manifest; the shardswarm.* keys (index, count, layer range, source SHA-256,
block count); that the tensors are exactly the shard's layers (plus token_embd.weight on shard 0,
output_norm.weight and output.weight on the last); that every source tensor appears in exactly one
shard. With --source, also that the metadata equals the source's and every tensor's bytes equal
the source's (output.weight compared with token_embd.weight when the source ties them).
Exits 1 when anything mismatches (every mismatch is listed on stderr), 0 when all is well.
"""

import argparse
import hashlib
import importlib.metadata
import json
import os
import re
import sys

import gguf
import numpy as np

BLOCK = re.compile(r"^blk\.(\d+)\.")
EVERY = {"rope_freqs.weight"}


def field_value(field):
    """The Python value of a scalar or string GGUF field."""
    if hasattr(field, "contents"):
        return field.contents()
    part = field.parts[field.data[0]]
    if field.types and field.types[0] == gguf.GGUFValueType.STRING:
        return bytes(part).decode("utf-8")
    return part[0].item()


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def raw_fields(reader):
    """Metadata as comparable raw bytes, excluding the GGUF header pseudo-fields."""
    out = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        out[name] = b"".join(np.asarray(p).tobytes() for p in field.parts)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--source", help="the unsplit GGUF, for metadata and byte-for-byte checks")
    args = ap.parse_args()

    errors = []
    manifest = json.load(open(os.path.join(args.dir, "manifest.json")))
    n = manifest["total_shards"]
    blocks = manifest["block_count"]
    if len(manifest["shards"]) != n:
        errors.append(f"manifest lists {len(manifest['shards'])} shards, total_shards {n}")

    source = gguf.GGUFReader(args.source) if args.source else None
    src_tensors = {t.name: t for t in source.tensors} if source else {}
    src_fields = raw_fields(source) if source else {}
    tied = source is not None and "output.weight" not in src_tensors

    seen = {}
    for entry in manifest["shards"]:
        k = entry["index"]
        path = os.path.join(args.dir, entry["filename"])
        size = os.path.getsize(path)
        if size != entry["size"]:
            errors.append(f"{path}: size {size}, manifest {entry['size']}")
        if sha256_of(path) != entry["sha256"]:
            errors.append(f"{path}: sha256 differs from manifest")
        r = gguf.GGUFReader(path)
        start, end = entry["layers"]
        expect_keys = {
            "shardswarm.shard_index": k,
            "shardswarm.shard_count": n,
            "shardswarm.layer_start": start,
            "shardswarm.layer_end": end,
            "shardswarm.source_sha256": manifest["source_sha256"],
            "shardswarm.block_count": blocks,
        }
        for key, want in expect_keys.items():
            got = field_value(r.fields[key]) if key in r.fields else None
            if got != want:
                errors.append(f"{path}: {key} = {got!r}, expected {want!r}")
        arch = field_value(r.fields["general.architecture"])
        if arch != manifest["architecture"]:
            errors.append(f"{path}: architecture {arch!r}")
        if source:
            fields = raw_fields(r)
            for key in src_fields:
                if fields.get(key) != src_fields[key]:
                    errors.append(f"{path}: metadata {key} differs from the source")
            extra = set(fields) - set(src_fields) - set(expect_keys)
            if extra:
                errors.append(f"{path}: unexpected metadata keys {sorted(extra)}")

        layers_present = set()
        for t in r.tensors:
            m = BLOCK.match(t.name)
            if m:
                b = int(m.group(1))
                layers_present.add(b)
                ok = start <= b < end
            elif t.name == "token_embd.weight":
                ok = k == 0
            elif t.name in ("output_norm.weight", "output.weight"):
                ok = k == n - 1
            else:
                ok = t.name in EVERY
            if not ok:
                errors.append(f"{path}: tensor {t.name} does not belong in layers [{start}, {end})")
            if t.name not in EVERY:
                seen[t.name] = seen.get(t.name, 0) + 1
            if source:
                src_name = "token_embd.weight" if tied and t.name == "output.weight" else t.name
                st = src_tensors.get(src_name)
                if st is None:
                    errors.append(f"{path}: tensor {t.name} is not in the source")
                elif (st.tensor_type != t.tensor_type or list(st.shape) != list(t.shape)
                      or st.data.tobytes() != t.data.tobytes()):
                    errors.append(f"{path}: tensor {t.name} differs from source {src_name}")
        if layers_present != set(range(start, end)):
            errors.append(f"{path}: layers present {sorted(layers_present)}, expected [{start}, {end})")
        names = {t.name for t in r.tensors}
        if k == 0 and "token_embd.weight" not in names:
            errors.append(f"{path}: shard 0 lacks token_embd.weight")
        if k == n - 1 and not {"output_norm.weight", "output.weight"} <= names:
            errors.append(f"{path}: last shard lacks output_norm.weight or output.weight")
        print(f"{entry['filename']}: layers [{start}, {end}), {len(r.tensors)} tensors, {size} bytes")

    for name, count in seen.items():
        if count != 1:
            errors.append(f"tensor {name} appears in {count} shards")
    if source:
        expected = {t.name for t in source.tensors} - EVERY
        if tied:
            expected.add("output.weight")
        if set(seen) != expected:
            errors.append(f"tensor sets differ: missing {sorted(expected - set(seen))}, extra {sorted(set(seen) - expected)}")

    ranges = [tuple(e["layers"]) for e in manifest["shards"]]
    covered = [b for s, e in ranges for b in range(s, e)]
    if covered != list(range(blocks)):
        errors.append(f"layer ranges {ranges} do not cover 0..{blocks} contiguously")

    if errors:
        for e in errors:
            print("MISMATCH:", e, file=sys.stderr)
        return 1
    print(f"ok: {n} shards checked with gguf {importlib.metadata.version('gguf')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
