"""The datatrove steps, run by datatrove's LocalPipelineExecutor on the mixed fixture, give what ``prepare code``
gives: the same kept files, the same redacted texts, the same records of dropped files, byte-identical token
shards with the same manifest, the same drop counts."""

import hashlib
import json

import pytest

pytest.importorskip("datatrove")

import corpus_fixture as cf  # noqa: E402
from datatrove.data import Document  # noqa: E402
from datatrove.executor import LocalPipelineExecutor  # noqa: E402
from datatrove.pipeline.base import PipelineStep  # noqa: E402
from loguru import logger  # noqa: E402

from litgpt_clone.corpus.pipeline import CorpusConfig, CorpusError, run  # noqa: E402
from litgpt_clone.data.pretrain import Shards  # noqa: E402
from litgpt_clone.data.shards import TokenShards  # noqa: E402
from litgpt_clone.tokenizer import Tokenizer  # noqa: E402
from litgpt_clone_datatrove import ExactDedupFilter, TokenShardWriter, code_corpus_pipeline  # noqa: E402

CORPUS_FIELDS = {
    "config", "config_hash", "corpus_version", "duplicate_clusters", "empty_repositories", "inputs", "languages",
    "license_types", "outputs", "pii", "previous_version", "repositories", "stages", "tools", "totals",
}
"""What only a ``prepare code`` version's manifest holds (versioning, configuration, counts): not steps (README)."""


class Collect(PipelineStep):
    """Write what reaches the end of the pipeline as JSONL (records, texts, bytes), for the comparison."""

    name, type = "collect", "💽 - WRITER"

    def __init__(self, path):
        super().__init__()
        self.path = str(path)

    def run(self, data, rank=0, world_size=1):
        with open(self.path, "w") as f:
            for doc in data:
                media = doc.media[0].media_bytes.decode(doc.metadata["record"]["encoding"])
                f.write(json.dumps({"record": doc.metadata["record"], "text": doc.text, "media": media}, sort_keys=True) + "\n")
                yield doc


def test_datatrove_pipeline_matches_prepare_code(tmp_path):
    paths = cf.build(tmp_path / "src")
    tokenizer = cf.train_tokenizer(tmp_path / "tok", [cf.APP, cf.UTIL, cf.GO, cf.RUST, cf.C, cf.SHELL, cf.RUBY, cf.MIT] * 4)
    options = dict(tokenizer_dir=str(tokenizer), optout=str(paths["optout"]), decontaminate=[str(paths["bench"])],
                   max_file_size=cf.MAX_FILE_SIZE, val_fraction=0.3, shard_tokens=300,
                   keep_vendor=True, filters={"max_line_length": 3000, "max_mean_line_length": 3000})
    ours = run(CorpusConfig(sources=cf.sources(paths), **options), tmp_path / "ours", log=lambda _: None)

    inside = paths["loose"] / "dt"  # outputs and logs inside a source (sources=["."]): the reader must not read them
    steps = code_corpus_pipeline(cf.sources(paths), inside / "shards", license_cache=str(tmp_path / "ours" / "cache" / "license_detections.json"),
                                 skip=[str(inside / "logs")], exclusion_dir=str(inside / "excluded"), **options)
    executor = LocalPipelineExecutor(pipeline=steps[:-1] + [Collect(tmp_path / "kept.jsonl"), steps[-1]], tasks=1,
                                     logging_dir=str(inside / "logs"))
    executor.run()

    kept = [json.loads(line) for line in (tmp_path / "kept.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (ours.version_dir / "text.jsonl").read_text().splitlines()]
    assert [(k["record"]["repo"], k["record"]["path"], k["text"]) for k in kept] == [(e["repo"], e["path"], e["text"]) for e in expected]
    ours_records = [json.loads(line) for line in (ours.version_dir / "files.jsonl").read_text().splitlines()]
    by_name = {(r["repo"], r["path"]): r for r in ours_records}
    for k in kept:
        mine = by_name[(k["record"]["repo"], k["record"]["path"])]
        for field in ("blob_id", "content_id", "language", "detected_licenses", "license_type", "pii", "encoding"):
            assert k["record"][field] == mine[field], field
        assert k["media"] == k["text"]  # the bytes are redacted too
    assert any(k["record"]["pii"] for k in kept) and not any("jane.doe@acme-widgets.com" in k["media"] for k in kept)

    # every dropped file's record, as files.jsonl has it (stage, reason, the copy it duplicates)
    files = sorted((inside / "excluded").glob("*/*.jsonl"))
    excluded = [json.loads(line)["metadata"]["record"] for f in files for line in f.read_text().splitlines()]
    dropped_records = [r for r in ours_records if r["drop_stage"] is not None]
    assert sorted(excluded, key=lambda r: (r["repo"], r["path"])) == dropped_records and len(excluded) == 22
    assert {r["drop_stage"] for r in excluded} >= {"read", "decode", "exact_dedup", "near_dedup"}
    assert sum(r["duplicate_of"] is not None for r in excluded) == 2

    shard_manifest = json.loads((inside / "shards" / "manifest.json").read_text())
    assert set(ours.manifest) - set(shard_manifest) == CORPUS_FIELDS  # nothing a shard reader uses is missing
    for field, value in shard_manifest.items():  # vocab size, EOS, vocabulary_sha256, each shard's tokens and SHA-256
        assert value == ours.manifest[field], field
    for shard in shard_manifest["shards"]:
        assert (inside / "shards" / shard["file"]).read_bytes() == (ours.version_dir / shard["file"]).read_bytes()

    stats = json.loads((inside / "logs" / "stats.json").read_text())
    assert stats[0]["time_stats"]["unit"] == "task"  # the reader's time: listing, git, licenses, decoding, per task
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
    assert dropped["generated"] == 3 and dropped["alpha"] == 1 and "vendor" not in dropped  # keep_vendor, filters applied


def _documents(texts: list[str], first: int) -> list[Document]:
    records = [{"repo": "r", "path": f"f{i}.py", "blob_id": hashlib.sha1(t.encode()).hexdigest(), "content_id": t, "license_type": "permissive",
                "commit_time": 0} for i, t in enumerate(texts, first)]
    return [Document(text=t, id=r["path"], metadata={"record": r}) for t, r in zip(texts, records)]


def test_several_tasks_write_one_shard_folder_and_warn_of_duplicates_across_tasks(tmp_path):
    tokenizer = cf.train_tokenizer(tmp_path / "tok", [cf.APP, cf.UTIL, cf.GO, cf.RUST] * 4)
    tasks = [[cf.APP, cf.UTIL], [cf.GO, cf.RUST, cf.APP]]  # task 1 holds a copy of task 0's APP

    warnings = []
    sink = logger.add(lambda message: warnings.append(str(message)), level="WARNING")
    try:
        task1 = list(ExactDedupFilter().run(iter(_documents(tasks[1], 2)), rank=1, world_size=2))
    finally:
        logger.remove(sink)
    assert len(task1) == 3 and any("duplicates in different tasks are all kept" in w and "tasks=1" in w for w in warnings)

    writer = TokenShardWriter(tmp_path / "shards", tokenizer, val_fraction=0, shard_tokens=50)
    list(writer.run(iter(_documents(tasks[0], 0)), rank=0, world_size=2))
    assert not (tmp_path / "shards" / "manifest.json").exists()  # task 1 has not finished
    list(writer.run(iter(task1), rank=1, world_size=2))
    one = TokenShardWriter(tmp_path / "one", tokenizer, val_fraction=0, shard_tokens=50)
    list(one.run(iter(_documents(tasks[0] + tasks[1], 0))))

    train, val = Shards(tmp_path / "shards").streams(Tokenizer(tokenizer))  # what pretrain --data.path shards reads
    expected = TokenShards(tmp_path / "one")
    assert val is None and len(train) == len(expected) > 100
    assert train.read(0, len(train)).tolist() == expected.read(0, len(expected)).tolist()
    assert {s["file"].split("/")[0] for s in train.manifest["shards"]} == {"00000", "00001"}


def test_bad_arguments_fail_when_the_pipeline_is_built(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text(cf.UTIL)
    (src / "b.go").write_text(cf.GO)
    noeos = cf.train_tokenizer(tmp_path / "noeos", [cf.APP] * 2)
    (noeos / "tokenizer_config.json").unlink()
    cases = [
        (dict(license_policy="Strict"), "LicensePolicyFilter(policy='Strict'): use one of permissive, strict, all"),
        (dict(near_dedup_threshold=0.999), "NearDedupFilter(threshold=0.999): use a Jaccard similarity in [0, 0.997]"),
        (dict(decontaminate=[str(tmp_path / "nope.jsonl")]), f"DecontaminationFilter: no file at {tmp_path / 'nope.jsonl'}"),
        (dict(filters={"max_line_lenght": 500}), "CodeQualityFilter: unknown threshold 'max_line_lenght'"),
        (dict(languages=["python"]), "LanguageFilter(languages=['python']): not a language GitHub Linguist knows"),
        (dict(sources=[str(tmp_path / "nowhere")]), f"CodeRepositoryReader: source {tmp_path / 'nowhere'} does not exist"),
        (dict(tokenizer_dir=str(noeos)), f"TokenShardWriter: the tokenizer in {noeos} has no EOS token to end documents"),
    ]
    for change, message in cases:
        with pytest.raises(CorpusError) as err:
            code_corpus_pipeline(**{"sources": [str(src)], "out_dir": str(tmp_path / "out"), **change})
        assert message in str(err.value) and "\n" not in str(err.value)

    steps = code_corpus_pipeline([str(src)], tmp_path / "out", languages=["Go"])
    assert [doc.id for doc in steps[1].run(steps[0].run())] == ["src/b.go"]
