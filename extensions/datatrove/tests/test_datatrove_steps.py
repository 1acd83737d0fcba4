"""The datatrove steps, run by datatrove's LocalPipelineExecutor on the mixed fixture, give what ``prepare code``
gives: the same kept files, the same redacted texts, byte-identical token shards, the same drop counts."""

import json

import pytest

pytest.importorskip("datatrove")

import corpus_fixture as cf  # noqa: E402
from datatrove.executor import LocalPipelineExecutor  # noqa: E402
from datatrove.pipeline.base import PipelineStep  # noqa: E402

from litgpt_clone.corpus.pipeline import CorpusConfig, run  # noqa: E402
from litgpt_clone_datatrove import code_corpus_pipeline  # noqa: E402


class Collect(PipelineStep):
    """Write what reaches the end of the pipeline as JSONL (records and texts), for the comparison."""

    name, type = "collect", "💽 - WRITER"

    def __init__(self, path):
        super().__init__()
        self.path = str(path)

    def run(self, data, rank=0, world_size=1):
        with open(self.path, "w") as f:
            for doc in data:
                f.write(json.dumps({"record": doc.metadata["record"], "text": doc.text}, sort_keys=True) + "\n")
                yield doc


def test_datatrove_pipeline_matches_prepare_code(tmp_path):
    paths = cf.build(tmp_path / "src")
    tokenizer = cf.train_tokenizer(tmp_path / "tok", [cf.APP, cf.UTIL, cf.GO, cf.RUST, cf.C, cf.SHELL, cf.RUBY, cf.MIT] * 4)
    options = dict(tokenizer_dir=str(tokenizer), optout=str(paths["optout"]), decontaminate=[str(paths["bench"])],
                   max_file_size=cf.MAX_FILE_SIZE, val_fraction=0.3, shard_tokens=300)
    ours = run(CorpusConfig(sources=cf.sources(paths), **options), tmp_path / "ours", log=lambda _: None)

    steps = code_corpus_pipeline(cf.sources(paths), tmp_path / "dt_shards", license_cache=str(tmp_path / "ours" / "cache" / "license_detections.json"), **options)
    executor = LocalPipelineExecutor(pipeline=steps[:-1] + [Collect(tmp_path / "kept.jsonl"), steps[-1]], tasks=1,
                                     logging_dir=str(tmp_path / "logs"))
    executor.run()

    kept = [json.loads(line) for line in (tmp_path / "kept.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (ours.version_dir / "text.jsonl").read_text().splitlines()]
    assert [(k["record"]["repo"], k["record"]["path"], k["text"]) for k in kept] == [(e["repo"], e["path"], e["text"]) for e in expected]
    ours_records = {(r["repo"], r["path"]): r for r in map(json.loads, (ours.version_dir / "files.jsonl").read_text().splitlines())}
    for k in kept:
        mine = ours_records[(k["record"]["repo"], k["record"]["path"])]
        for field in ("blob_id", "content_id", "language", "detected_licenses", "license_type", "pii", "encoding"):
            assert k["record"][field] == mine[field], field

    shard_manifest = json.loads((tmp_path / "dt_shards" / "manifest.json").read_text())
    assert shard_manifest["shards"] == ours.manifest["shards"]  # same files, token counts and SHA-256
    for shard in shard_manifest["shards"]:
        assert (tmp_path / "dt_shards" / shard["file"]).read_bytes() == (ours.version_dir / shard["file"]).read_bytes()

    stats = json.loads((tmp_path / "logs" / "stats.json").read_text())
    dropped = {}
    for step in stats:
        for key, value in step["stats"].items():
            if key.startswith("dropped_"):
                dropped[key[len("dropped_"):]] = value["total"] if isinstance(value, dict) else value
    ours_dropped = {}
    for stage in ours.manifest["stages"]:
        for reason, count in stage["dropped"].items():
            ours_dropped[reason] = ours_dropped.get(reason, 0) + count
    assert dropped == ours_dropped and sum(dropped.values()) == 22
