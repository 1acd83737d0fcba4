"""The code-corpus pipeline (The Stack v2 style): sources, identity, language, licenses, opt-out, PII, filters, dedup, decontamination, manifest, shards, report."""
