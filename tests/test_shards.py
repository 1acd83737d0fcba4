"""Token shards: round trip, determinism, split, checksums."""

import json

import numpy as np
import pytest

from litgpt_clone.data.shards import ShardError, ShardWriter, TokenShards


def write(path, docs, shard_tokens=10, vocab_size=100):
    with ShardWriter(path, vocab_size=vocab_size, eos_id=0, shard_tokens=shard_tokens) as w:
        for i, doc in enumerate(docs):
            w.add(doc, split="val" if i % 4 == 3 else "train")


def test_round_trip_determinism_and_checksums(tmp_path):
    docs = [list(range(1, 1 + (i * 7) % 13 + 1)) for i in range(20)]
    write(tmp_path / "a", docs)
    write(tmp_path / "b", docs)
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["dtype"] == "uint16" and len([s for s in manifest["shards"] if s["split"] == "train"]) > 1
    for shard in manifest["shards"]:  # byte-identical output for the same input
        assert (tmp_path / "a" / shard["file"]).read_bytes() == (tmp_path / "b" / shard["file"]).read_bytes()
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()

    train = TokenShards(tmp_path / "a", "train")
    expected = np.concatenate([d + [0] for i, d in enumerate(docs) if i % 4 != 3])
    assert len(train) == expected.size == sum(s["tokens"] for s in manifest["shards"] if s["split"] == "train")
    np.testing.assert_array_equal(train.read(0, len(train)), expected)
    np.testing.assert_array_equal(train.read(7, 15), expected[7:22])  # crosses a shard boundary
    assert len(TokenShards(tmp_path / "a", "val")) == sum(len(d) + 1 for i, d in enumerate(docs) if i % 4 == 3)

    victim = tmp_path / "a" / manifest["shards"][0]["file"]
    victim.write_bytes(bytes([victim.read_bytes()[0] ^ 0xFF]) + victim.read_bytes()[1:])
    with pytest.raises(ShardError, match="SHA-256"):
        TokenShards(tmp_path / "a")


def test_large_vocab_and_bad_ids(tmp_path):
    write(tmp_path / "big", [[70000, 1]], vocab_size=100_000)
    assert json.loads((tmp_path / "big" / "manifest.json").read_text())["dtype"] == "uint32"
    np.testing.assert_array_equal(TokenShards(tmp_path / "big").read(0, 3), [70000, 1, 0])
    with pytest.raises(ShardError, match="out of range"):
        write(tmp_path / "bad", [[5, 100]])
    with pytest.raises(ShardError, match="manifest.json"):
        TokenShards(tmp_path / "nothing")
