#!/usr/bin/env python3
"""Writes the committed seed corpus under fuzz/corpus/<target>/ (deterministic).

A handful of valid encodings per target, a few KB each; the fuzzer mutates from there.
Files named `regression-*` are crash inputs the fuzzers found, kept by hand (not written here).
Needs the PyPI `gguf` package (as .ci/run installs) for the two GGUF seeds.
Run from anywhere: python3 fuzz/seeds.py
"""
import hashlib
import json
import os
import struct

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


PEER_A = "12D3KooWA9yqBmYJjnMpxyEPmP8K7UnEs1XZdCpL1SsSmRZ3pfNe"
PEER_B = "12D3KooWJRB5yWFbvmcsjRLDg6WczQfTJVwVWj2zN8z7rHWmrHsy"
HASH = "5d0a1b1e2d4f6a7b8c9d0e1f2a3b4c5d6e7f8091"


def envelope(command, params):
    return json.dumps({"command": command, "request_id": "req-1769057962082929400",
                       "from": PEER_A, "to": PEER_B, "timestamp": 1769057962, "params": params},
                      separators=(",", ":"))


def seeds_envelope():
    put("envelope", "sync", envelope("SYNC_TORRENTS", {"total_shards": 8}))
    put("envelope", "list", envelope("LIST_FILES", {}))
    put("envelope", "status", envelope("SWARM_STATUS", None))
    put("envelope", "loaded", envelope("SHARD_LOADED", {"model_id": "0123456789abcdef",
                                                          "loaded": [0, 1], "verified": [0, 1, 2]}))
    put("envelope", "request", envelope("REQUEST_SHARDS", {"model_id": "m", "max_shards": 2}))
    put("envelope", "assign", envelope("ASSIGN_SHARDS", {"model_id": "m", "shards": [3, 4]}))
    put("envelope", "changed", envelope("CATALOG_CHANGED", {"model_id": "m", "total_shards": 4}))
    put("envelope", "unknown", envelope("EXECUTE_TASK", {"x": [1, {"y": "z"}]}))


def response(command, status, body):
    d = {"command": command, "request_id": "req-1", "from": PEER_B, "to": PEER_A,
         "timestamp": 1769057962, "status": status}
    d.update(body)
    return json.dumps(d, separators=(",", ":"))


def file_entry(i):
    return {"info_hash": HASH, "filename": f"shard-{i}.gguf", "size": 13946032,
            "shard_index": i, "layers": [i * 4, i * 4 + 4]}


def seeds_response():
    put("response", "sync", response("SYNC_TORRENTS", "success", {
        "model_id": "0123456789abcdef", "model": "SmolLM2-135M-Instruct", "total_shards": 2,
        "files": [file_entry(0), file_entry(1)]}))
    put("response", "list", response("LIST_FILES", "success",
                                     {"model_id": None, "files": [file_entry(0)]}))
    put("response", "assign", response("REQUEST_SHARDS", "success",
                                       {"model_id": "m", "shards": [0, 1]}))
    node = {"peer_id": PEER_A, "role": "node", "addresses": ["/ip4/127.0.0.1/udp/1/quic-v1"],
            "loaded": [0], "verified": [0, 1],
            "downloading": [{"index": 5, "have": 1048576, "size": 2097152}],
            "bytes_up": 10, "bytes_down": 20}
    put("response", "node", response("GET_NODE_STATUS", "success", node))
    put("response", "swarm", response("SWARM_STATUS", "success", {
        "swarm_ready": False, "total_shards": 2, "model": "x", "model_id": "m", "missing": [1],
        "shards": [{"index": 0, "filename": "shard-0.gguf", "info_hash": HASH, "size": 1,
                    "layers": [0, 4], "loaded_by": [PEER_A]}],
        "nodes": [node]}))
    put("response", "error", response("SYNC_TORRENTS", "error", {
        "error": {"code": "TOO_LARGE", "message": "message of at least 2 bytes"}}))


def seeds_manifest():
    shards = [{"index": i, "filename": f"shard-{i}.gguf", "layers": l, "size": 10 + i,
               "sha256": "00" * 32, "info_hash": HASH, "piece_length": 262144}
              for i, l in enumerate([[0, 1], [1, 4]])]
    m = {"format": 1, "model_id": "0123456789abcdef", "model_name": "Tiny",
         "architecture": "llama", "source_file": "tiny.gguf", "source_sha256": "11" * 32,
         "source_size": 20, "block_count": 4, "total_shards": 2, "shards": shards}
    put("manifest", "two_shards", json.dumps(m, indent=2) + "\n")
    put("manifest", "name", "shard-17.gguf")


def wire_frame(ty, body):
    return struct.pack(">IB", 1 + len(body), ty) + body


def seeds_piece_wire():
    ih = bytes(range(20))
    frames = [
        wire_frame(0, struct.pack(">H", 1)),
        wire_frame(1, ih),
        wire_frame(2, ih + b"\xff\xe0"),
        wire_frame(3, ih + struct.pack(">I", 7)),
        wire_frame(4, ih),
        wire_frame(5, struct.pack(">Q", 9) + ih + struct.pack(">III", 7, 16384, 16384)),
        wire_frame(6, struct.pack(">Q", 9) + b"block bytes"),
        wire_frame(7, struct.pack(">QB", 9, 1)),
        wire_frame(8, struct.pack(">Q", 9)),
        wire_frame(9, ih),
        wire_frame(10, ih + b"d6:lengthi1ee"),
    ]
    # First byte: the chunk size the harness cuts the stream into, minus one.
    put("piece_wire", "hello_bitfield", b"\x00" + frames[0] + frames[2])
    put("piece_wire", "all_frames", b"\x06" + b"".join(frames))
    put("piece_wire", "request_piece", b"\xff" + frames[5] + frames[6])


def bencode(v):
    if isinstance(v, int):
        return b"i%de" % v
    if isinstance(v, str):
        v = v.encode()
    if isinstance(v, bytes):
        return b"%d:" % len(v) + v
    if isinstance(v, list):
        return b"l" + b"".join(bencode(x) for x in v) + b"e"
    if isinstance(v, dict):
        items = sorted((k.encode() if isinstance(k, str) else k, x) for k, x in v.items())
        return b"d" + b"".join(bencode(k) + bencode(x) for k, x in items) + b"e"
    raise TypeError(v)


def seeds_metainfo():
    piece = 16384
    data = bytes(range(256)) * 100  # 25,600 bytes: two pieces
    pieces = b"".join(hashlib.sha1(data[i:i + piece]).digest() for i in range(0, len(data), piece))
    info = {"length": len(data), "name": "shard-0.gguf", "piece length": piece, "pieces": pieces}
    put("metainfo", "info", bencode(info))
    put("metainfo", "torrent", bencode({"announce": "http://127.0.0.1:1/announce",
                                         "created by": "shardswarm/0.1.0", "info": info}))
    put("metainfo", "name", "shard-3.gguf")


def seeds_resume():
    # Must match the fixture in fuzz_targets/resume.rs.
    piece, count = 16384, 19
    length = piece * (count - 1) + 1000
    zero_full = hashlib.sha1(bytes(piece)).digest()
    zero_last = hashlib.sha1(bytes(1000)).digest()
    pieces = b"".join(b"\xee" * 20 if i % 2 else (zero_last if i == count - 1 else zero_full)
                      for i in range(count))
    info = {"length": length, "name": "shard-0.gguf", "piece length": piece, "pieces": pieces}
    ih = hashlib.sha1(bencode(info)).digest()
    head = b"SSRESUM2" + ih + struct.pack(">QQI", piece, length, count)
    synced, unsynced = bytes([0b10100000, 0, 0]), bytes([0b00001110, 0b10000000, 0b00100000])
    body = head + synced + unsynced
    # Flag 1: the harness appends the SHA-1 trailer; flag 0: the file as given.
    put("resume", "fixed_trailer", b"\x01" + body)
    put("resume", "with_trailer", b"\x00" + body + hashlib.sha1(body).digest())
    put("resume", "other_torrent", b"\x01" + b"SSRESUM2" + bytes(20) + head[28:] + synced + synced)


def seeds_pipeline_frame():
    def body(ty, payload):
        return bytes([ty]) + payload

    def pstr(s):
        s = s.encode()
        return struct.pack(">H", len(s)) + s

    hops = pstr(PEER_A) + struct.pack(">II", 0, 2) + pstr(PEER_B) + struct.pack(">II", 2, 8)
    open_ = body(1, struct.pack(">QI", 7, 4096) + struct.pack("<f", 0.7) + struct.pack(">I", 40)
                 + struct.pack("<f", 0.9) + struct.pack(">H", 2) + hops)
    step_tokens = body(2, struct.pack(">II", 3, 1000) + struct.pack("<f", 0.25)
                       + b"\x00" + struct.pack(">I", 3) + struct.pack(">III", 1, 2, 49151))
    hidden = struct.pack("<6f", 1.0, -2.5, 3.0, -3.4e38, 0.0, 1e-30)
    step_hidden = body(2, struct.pack(">II", 0, 1) + struct.pack("<f", 0.0) + b"\x01"
                       + struct.pack(">II", 2, 3) + hidden)
    token = body(3, struct.pack(">I", 42))
    error = body(4, b"\x03" + pstr("p") + pstr("no room: 3 sessions"))
    for name, b in [("open", open_), ("step_tokens", step_tokens), ("step_hidden", step_hidden),
                    ("token", token), ("error", error)]:
        put("pipeline_frame", name, b)
    put("pipeline_frame", "prefixed_step", struct.pack(">I", len(step_hidden)) + step_hidden)


def tiny_llama(path, with_tokenizer):
    import gguf
    w = gguf.GGUFWriter(path, "llama")
    dim, ffn, heads, kv, vocab = 8, 16, 2, 1, 6
    w.add_name("fuzz-seed")
    w.add_custom_alignment(32)
    w.add_block_count(1)
    w.add_context_length(16)
    w.add_embedding_length(dim)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    if with_tokenizer:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("smollm")
        w.add_token_list(["<|im_start|>", "<|im_end|>", "h", "e", "he", "Ġ"])
        w.add_token_types([3, 3, 1, 1, 1, 1])
        w.add_token_merges(["h e"])
        w.add_bos_token_id(0)
        w.add_eos_token_id(1)
    rng = np.random.default_rng(0)
    kv_dim = dim // heads * kv

    def t(name, shape):
        w.add_tensor(name, rng.standard_normal(shape).astype(np.float32) * 0.1)

    t("token_embd.weight", (vocab, dim))
    t("blk.0.attn_norm.weight", (dim,))
    t("blk.0.attn_q.weight", (dim, dim))
    t("blk.0.attn_k.weight", (kv_dim, dim))
    t("blk.0.attn_v.weight", (kv_dim, dim))
    t("blk.0.attn_output.weight", (dim, dim))
    t("blk.0.ffn_norm.weight", (dim,))
    t("blk.0.ffn_gate.weight", (ffn, dim))
    t("blk.0.ffn_up.weight", (ffn, dim))
    t("blk.0.ffn_down.weight", (dim, ffn))
    t("output_norm.weight", (dim,))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def seeds_gguf():
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        for name, tok in [("tiny_llama", True), ("tiny_llama_no_tokenizer", False)]:
            p = os.path.join(d, name + ".gguf")
            tiny_llama(p, tok)
            data = open(p, "rb").read()
            put("gguf", name, data)
            put("gguf_load", name, data)


def seeds_bt_wire():
    ih = bytes(range(20))
    handshake = b"\x13BitTorrent protocol" + bytes([0, 0, 0, 0, 0, 0x10, 0, 0]) + ih + b"-SS0100-" + bytes(12)
    put("bt_wire", "handshake", handshake)

    def msg(mid, payload=b""):
        return struct.pack(">IB", 1 + len(payload), mid) + payload

    ext_hs = bencode({"m": {"ut_metadata": 3}, "metadata_size": 31, "v": "shardswarm"})
    stream = b"".join([
        struct.pack(">I", 0),  # keep-alive
        msg(0), msg(1), msg(2), msg(3),
        msg(4, struct.pack(">I", 7)),
        msg(5, b"\xff\xe0"),
        msg(6, struct.pack(">III", 1, 0, 16384)),
        msg(7, struct.pack(">II", 1, 0) + b"block"),
        msg(8, struct.pack(">III", 1, 0, 16384)),
        msg(9, struct.pack(">H", 6881)),
        msg(20, b"\x00" + ext_hs),
        msg(20, b"\x03" + bencode({"msg_type": 0, "piece": 0})),
        msg(20, b"\x03" + bencode({"msg_type": 1, "piece": 0, "total_size": 11}) + b"d1:ai1ee"),
        msg(20, b"\x03" + bencode({"msg_type": 2, "piece": 0})),
    ])
    # Flag bit 0: a piece count follows (11 pieces); the rest of the flag sets the chunk size.
    put("bt_wire", "messages_with_pieces", b"\x01" + struct.pack(">I", 11) + stream)
    put("bt_wire", "messages_bytewise", b"\x00" + stream)
    put("bt_wire", "extended_handshake", ext_hs)


if __name__ == "__main__":
    seeds_envelope()
    seeds_response()
    seeds_manifest()
    seeds_piece_wire()
    seeds_metainfo()
    seeds_resume()
    seeds_pipeline_frame()
    seeds_gguf()
    seeds_bt_wire()
    for t in sorted(os.listdir(CORPUS)):
        files = os.listdir(os.path.join(CORPUS, t))
        size = sum(os.path.getsize(os.path.join(CORPUS, t, f)) for f in files)
        print(f"{t}: {len(files)} files, {size} bytes")
