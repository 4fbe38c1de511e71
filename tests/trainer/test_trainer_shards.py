import json

import numpy as np
import pytest

from cpt_trainer.train.errors import TrainerInputError
from cpt_trainer.train.shards import TokenStream, check_matches_tokenizer, read_manifest, split_documents, write_corpus


def test_written_documents_read_back_across_shards(tmp_path):
    docs = [[5, 6, 7], [8] * 10, [9, 10]]
    manifest = read_manifest(write_corpus(tmp_path, {"train": docs}, vocab_size=100, eos_id=2, shard_tokens=4))
    assert len(manifest.splits["train"]) > 1
    stream = TokenStream(manifest, "train")
    assert len(stream) == 3 + 10 + 2 + 3
    assert stream.read(2, 6).tolist() == [7, 2, 8, 8, 8, 8]
    assert [d.tolist() for d in split_documents(stream, 2)] == docs


def test_large_vocabularies_use_uint32(tmp_path):
    manifest = read_manifest(write_corpus(tmp_path, {"train": [[70000, 1]]}, vocab_size=80000, eos_id=2))
    assert manifest.dtype == "uint32"
    assert TokenStream(manifest, "train").read(0, 3).tolist() == [70000, 1, 2]


def test_vocab_mismatch_is_a_clear_error(tmp_path):
    manifest = read_manifest(write_corpus(tmp_path, {"train": [[1, 2, 3]]}, vocab_size=600, eos_id=2))
    with pytest.raises(TrainerInputError, match="vocab_size 600, the tokenizer has 512"):
        check_matches_tokenizer(manifest, 512, 2, "corpus x")
    with pytest.raises(TrainerInputError, match="eos_id"):
        check_matches_tokenizer(manifest, 600, 0, "corpus x")


def test_token_ids_beyond_the_vocabulary_are_refused(tmp_path):
    manifest = read_manifest(write_corpus(tmp_path, {"train": [[1, 599]]}, vocab_size=600, eos_id=2))
    # Pretend the manifest claims a smaller vocabulary than its contents use.
    raw = json.loads((tmp_path / "manifest.json").read_text())
    raw["vocab_size"] = 500
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(TrainerInputError, match="token id 599"):
        check_matches_tokenizer(read_manifest(tmp_path), 500, 2, "corpus x")
    assert manifest.vocab_size == 600


def test_truncated_shard_is_refused(tmp_path):
    write_corpus(tmp_path, {"train": [[1, 2, 3, 4]]}, vocab_size=100, eos_id=2)
    shard = tmp_path / "train-00000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(TrainerInputError, match="manifest says 5"):
        read_manifest(tmp_path)


def test_missing_manifest_is_refused(tmp_path):
    with pytest.raises(TrainerInputError, match="manifest not found"):
        read_manifest(tmp_path)


def test_memmap_dtype_is_little_endian_uint16(tmp_path):
    write_corpus(tmp_path, {"eval": [[258, 3]]}, vocab_size=1000, eos_id=2)
    raw = (tmp_path / "eval-00000.bin").read_bytes()
    assert np.frombuffer(raw, dtype="<u2").tolist() == [258, 3, 2]


def test_a_manifest_naming_a_shard_outside_the_corpus_folder_is_refused(tmp_path):
    corpus = tmp_path / "corpus"
    write_corpus(corpus, {"train": [[1, 2, 3]]}, vocab_size=100, eos_id=2)
    raw = json.loads((corpus / "manifest.json").read_text())
    shard = corpus / raw["splits"]["train"][0]["file"]
    outside = tmp_path / "elsewhere.bin"
    outside.write_bytes(shard.read_bytes())  # a file that would pass every other check
    raw["splits"]["train"][0]["file"] = "../elsewhere.bin"
    (corpus / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(TrainerInputError, match="'../elsewhere.bin' named in .* is outside the corpus folder"):
        read_manifest(corpus)
