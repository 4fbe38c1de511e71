"""Corpus curation (`cpt-trainer curate`): streaming clean-up, PII scrubbing, filters,
exact and MinHash-LSH near-dedup that stays correct across worker slices, tokenizer
analysis and packed token shards. See docs/curation.md."""
