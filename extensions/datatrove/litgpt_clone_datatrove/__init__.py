"""``prepare code``'s stages as datatrove pipeline steps (see README.md)."""

from litgpt_clone_datatrove.steps import (
    CodeQualityFilter,
    CodeRepositoryReader,
    DecontaminationFilter,
    ExactDedupFilter,
    LanguageFilter,
    LicensePolicyFilter,
    NearDedupFilter,
    OptOutFilter,
    PIIRedactor,
    TokenShardWriter,
)


def code_corpus_pipeline(sources, out_dir, tokenizer_dir=None, optout=None, decontaminate=None, license_policy="permissive",
                         layout="repo", max_file_size=1 << 20, val_fraction=0.01, seed=42, filters=None, license_cache=None,
                         near_dedup_threshold=0.7, shard_tokens=1 << 24, exclude=()):
    """The steps of ``litgpt-clone prepare code`` in its order, for a datatrove executor."""
    steps = [
        CodeRepositoryReader(sources, layout=layout, max_file_size=max_file_size, license_cache=license_cache, exclude=exclude),
        LanguageFilter(),
        LicensePolicyFilter(license_policy),
    ]
    if optout:
        steps.append(OptOutFilter(optout))
    steps.append(CodeQualityFilter(filters))
    if decontaminate:
        steps.append(DecontaminationFilter(decontaminate))
    steps += [PIIRedactor(), ExactDedupFilter(), NearDedupFilter(near_dedup_threshold, seed)]
    if tokenizer_dir:
        steps.append(TokenShardWriter(out_dir, tokenizer_dir, val_fraction=val_fraction, seed=seed, shard_tokens=shard_tokens))
    return steps


__all__ = [
    "CodeQualityFilter", "CodeRepositoryReader", "DecontaminationFilter", "ExactDedupFilter", "LanguageFilter",
    "LicensePolicyFilter", "NearDedupFilter", "OptOutFilter", "PIIRedactor", "TokenShardWriter", "code_corpus_pipeline",
]
