import pytest
import torch

from cpt_trainer.tinymodel import build_tiny_llama
from cpt_trainer.train.tokenizer_extension import chars_per_token, extend_vocabulary



@pytest.fixture
def fresh_tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)


@pytest.fixture(scope="session")
def big_tokenizer_dir(tmp_path_factory):
    """A 16k byte-level BPE trained on general text only (Python docs and stdlib sources), ~3 s."""
    import glob
    from pathlib import Path

    from cpt_trainer.shipped_text import general_documents
    from cpt_trainer.tinymodel import train_tokenizer

    sources = [Path(p).read_text(errors="replace") for p in sorted(glob.glob("/usr/lib/python3*/[a-m]*.py"))[:150]]
    out = tmp_path_factory.mktemp("tok16k")
    train_tokenizer(general_documents() + sources, out, vocab_size=16000)
    return out


def _proposed(tokenizer_dir, texts, limit):
    """The words curation proposes for these texts (the list a tenant copies into the CPTRun)."""
    from cpt_trainer.contract.config import TokenizerAnalysisConfig
    from cpt_trainer.curate.tokenization import CorpusTokenizer, TokenizerSample, analyse

    sample = TokenizerSample(1.0)
    for text in texts:
        sample.add(text, 0)
    cfg = TokenizerAnalysisConfig(min_frequency=2, min_pieces=2, extension_size=limit)
    return analyse(TokenizerSample.merged([sample.to_dict()]), CorpusTokenizer(str(tokenizer_dir), "test"), cfg)["proposed_extension"]


def _load(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def test_500_legal_words_cut_held_out_tokens_and_round_trip(big_tokenizer_dir):
    from cpt_trainer.shipped_text import legal_documents

    tok = _load(big_tokenizer_dir)
    legal = legal_documents(limit=600)
    fit, held = legal[0::2], legal[1::2]  # candidates from one half, measured on the other
    words = _proposed(big_tokenizer_dir, fit, 500)
    model = build_tiny_llama(len(tok), hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    report = extend_vocabulary(model, tok, words, held)
    assert len(report.added) >= 450
    assert report.token_reduction >= 0.05, report.to_dict()  # measured ~9-10 %
    assert report.warning is None and report.chars_per_token_after > report.chars_per_token_before
    text = "\n\n".join(held[:100])
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


@pytest.fixture(scope="session")
def tokenizer_32k_dir(tmp_path_factory):
    """A 32,000-token byte-level BPE (Llama 2's vocabulary size) trained on general text only: the
    Python docs and the standard library's sources (5.4 M chars), ~4 s."""
    import glob
    from pathlib import Path

    from cpt_trainer.shipped_text import general_documents
    from cpt_trainer.tinymodel import train_tokenizer

    sources = [Path(p).read_text(errors="replace") for p in sorted(glob.glob("/usr/lib/python3.11/**/*.py"))]
    out = tmp_path_factory.mktemp("tok32k")
    train_tokenizer(general_documents() + sources, out, vocab_size=32000)
    return out


@pytest.mark.slow
def test_500_legal_words_cut_tokens_with_a_32k_vocabulary(tokenizer_32k_dir):
    """A realistic vocabulary already holds more legal words whole: the 500 words curation proposes
    from 600 legal documents still cut the token count of the other 600 (measured -5.1 %)."""
    from cpt_trainer.shipped_text import legal_documents

    tok = _load(tokenizer_32k_dir)
    assert len(tok) == 32000
    legal = legal_documents(limit=1200)
    fit, held = legal[0::2], legal[1::2]
    words = _proposed(tokenizer_32k_dir, fit, 500)
    assert len(words) == 500
    model = build_tiny_llama(len(tok), hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    report = extend_vocabulary(model, tok, words, held)
    assert len(report.added) == 500 and report.warning is None
    assert report.tokens_after < report.tokens_before
    assert report.token_reduction >= 0.03, report.to_dict()
    assert report.chars_per_token_after > report.chars_per_token_before


@pytest.mark.parametrize("tied", [False, True])
def test_word_mid_text_is_one_token_and_rows_are_its_pieces_mean(big_tokenizer_dir, tied):
    tok = _load(big_tokenizer_dir)
    words = [w for w in ("indemnification", "notwithstanding", "sublicensable", "MERCHANTABILITY")
             if len(tok.encode(" " + w, add_special_tokens=False)) > 1]
    assert len(words) >= 3
    pieces = {w: tok.encode(" " + w, add_special_tokens=False) for w in words}
    model = build_tiny_llama(len(tok), hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, tie_word_embeddings=tied)
    old = len(tok)
    inp_before = model.get_input_embeddings().weight.detach().clone()
    report = extend_vocabulary(model, tok, words, [f"the {w} clause" for w in words])
    assert report.added == words and report.new_vocab_size == len(tok) > old
    inp = model.get_input_embeddings().weight.detach()
    assert model.get_output_embeddings().weight.shape[0] == inp.shape[0] == len(tok)
    torch.testing.assert_close(inp[:old], inp_before[:old], rtol=0, atol=0)  # old rows untouched
    for w in words:
        ids = tok.encode(f"the {w} clause", add_special_tokens=False)
        assert len(ids) == 3 and ids[1] >= old  # " word" mid-text is exactly one new token
        torch.testing.assert_close(inp[ids[1]], inp_before[pieces[w]].mean(dim=0), rtol=0, atol=1e-6)
        assert tok.decode(ids) == f"the {w} clause"
    if tied:
        assert inp.data_ptr() == model.get_output_embeddings().weight.data_ptr()


def test_an_extension_that_saves_nothing_is_a_warning(big_tokenizer_dir):
    tok = _load(big_tokenizer_dir)
    model = build_tiny_llama(len(tok), hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    report = extend_vocabulary(model, tok, ["indemnification"], ["plain words without the domain term"])
    assert report.tokens_after == report.tokens_before and report.warning
    assert report.to_dict()["warning"] == report.warning


def test_words_already_single_tokens_are_not_added(fresh_tokenizer):
    tok = fresh_tokenizer
    single = next(t for t in ("the", "The", "and") if len(tok.encode(t, add_special_tokens=False)) == 1)
    model = build_tiny_llama(len(tok), hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    report = extend_vocabulary(model, tok, [single, "indemnification"])
    assert report.added == ["indemnification"]


def test_chars_per_token_counts_characters_over_tokens(fresh_tokenizer):
    text = "permission is hereby granted"
    n = len(fresh_tokenizer.encode(text, add_special_tokens=False))
    assert chars_per_token(fresh_tokenizer, [text]) == pytest.approx(len(text) / n)


def test_training_with_an_extension_retokenizes_the_corpora(make_config, tmp_path, tokenizer, texts, model_dir):
    import json

    import numpy as np

    from cpt_trainer.contract.config import TrainerConfig, load_config
    from cpt_trainer.train.main import prepare

    words = _proposed(model_dir, texts["legal"], 2)  # the two that save the most tokens mid-text
    path = make_config(tokenizer_extension={"tokens": words}, batch={"micro_batch_size": 4, "global_batch_size": 8, "total_steps": 3})
    run = prepare(load_config(path, TrainerConfig))
    try:
        trainer = run.trainer
        assert run.extension["added"] == words
        assert run.extension["chars_per_token_after"] > run.extension["chars_per_token_before"]
        assert run.extension["tokens_after"] < run.extension["tokens_before"] and run.extension["warning"] is None
        new_ids = {trainer.tokenizer.encode(" " + w, add_special_tokens=False)[0] for w in words}  # in-context tokens
        assert min(new_ids) >= 512
        tokens = np.concatenate([trainer.mix.read(trainer.mix.next_sequences(50, 0))])
        assert new_ids & set(np.unique(tokens).tolist())  # the shards were re-encoded
        assert trainer.train() == "completed"
    finally:
        run.close()
    ck = tmp_path / "checkpoints" / "step-00000003"
    saved = json.loads((ck / "model" / "config.json").read_text())
    assert saved["vocab_size"] == run.extension["new_vocab_size"] > 512
    assert json.loads((ck / "metrics.json").read_text())["tokenizer_extension"]["added"] == words
