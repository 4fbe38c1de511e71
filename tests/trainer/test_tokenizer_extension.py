import pytest
import torch

from cpt_trainer.tinymodel import build_tiny_llama
from cpt_trainer.train.tokenizer_extension import chars_per_token, extend_vocabulary

WORDS = ["indemnification", "notwithstanding", "sublicensable"]


@pytest.fixture
def fresh_tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)


@pytest.mark.parametrize("tied", [False, True])
def test_new_rows_are_the_mean_and_new_words_are_one_token(fresh_tokenizer, tied, texts):
    tok = fresh_tokenizer
    assert all(len(tok.encode(w, add_special_tokens=False)) > 1 for w in WORDS)  # fragmented before
    model = build_tiny_llama(len(tok), hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, tie_word_embeddings=tied)
    old = len(tok)
    inp_before = model.get_input_embeddings().weight.detach().clone()
    out_before = model.get_output_embeddings().weight.detach().clone()
    sample = [t for t in texts["legal"][:40]] + [" ".join(WORDS * 20)]
    report = extend_vocabulary(model, tok, WORDS, sample)
    assert report.added == WORDS and report.new_vocab_size == old + 3 == len(tok)
    inp = model.get_input_embeddings().weight.detach()
    out = model.get_output_embeddings().weight.detach()
    assert inp.shape[0] == out.shape[0] == old + 3
    for row in range(old, old + 3):
        torch.testing.assert_close(inp[row], inp_before[:old].mean(dim=0), rtol=0, atol=1e-6)
        torch.testing.assert_close(out[row], out_before[:old].mean(dim=0), rtol=0, atol=1e-6)
    torch.testing.assert_close(inp[:old], inp_before[:old], rtol=0, atol=0)  # old rows untouched
    torch.testing.assert_close(out[:old], out_before[:old], rtol=0, atol=0)
    if tied:
        assert inp.data_ptr() == out.data_ptr()
    else:
        assert not torch.equal(inp[old], out[old])  # each matrix got its own mean
    for word in WORDS:
        ids = tok.encode(word, add_special_tokens=False)
        assert len(ids) == 1 and ids[0] >= old
        assert ids[0] in tok.encode(f"the {word} clause", add_special_tokens=False)  # in running text too
    assert report.chars_per_token_after > report.chars_per_token_before
    # The extended model runs on the new ids.
    ids = torch.tensor([tok.encode("the indemnification clause", add_special_tokens=False)])
    assert model(input_ids=ids).logits.shape[-1] == old + 3


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


def test_training_with_an_extension_retokenizes_the_corpora(make_config, tmp_path):
    import json

    import numpy as np

    from cpt_trainer.contract.config import TrainerConfig, load_config
    from cpt_trainer.train.main import prepare

    words = ["MERCHANTABILITY", "Copyright"]
    path = make_config(tokenizer_extension={"tokens": words}, batch={"micro_batch_size": 4, "global_batch_size": 8, "total_steps": 3})
    run = prepare(load_config(path, TrainerConfig))
    try:
        trainer = run.trainer
        assert run.extension["added"] == words
        assert run.extension["chars_per_token_after"] > run.extension["chars_per_token_before"]
        new_ids = set(trainer.tokenizer.convert_tokens_to_ids(words))
        assert min(new_ids) >= 512
        tokens = np.concatenate([trainer.mix.read(trainer.mix.next_sequences(50, 0))])
        assert new_ids & set(np.unique(tokens).tolist())  # the shards were re-encoded
        assert trainer.train() == "completed"
    finally:
        run.close()
    ck = tmp_path / "checkpoints" / "step-00000003"
    saved = json.loads((ck / "model" / "config.json").read_text())
    assert saved["vocab_size"] == 514
    assert json.loads((ck / "metrics.json").read_text())["tokenizer_extension"]["added"] == words
