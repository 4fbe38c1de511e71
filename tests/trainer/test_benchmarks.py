"""General benchmarks through lm-evaluation-harness: a cloze task built from shipped text, scored
on the trainer's live model; forgetting measured in accuracy; the stderr rule; clear refusals."""

import json
import math
import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from cpt_operator.decide.forgetting import EvalPoint, decide_forgetting
from cpt_trainer.contract.config import TrainerConfig, load_config
from cpt_trainer.train.benchmarks import Benchmark, read_task_file
from cpt_trainer.train.errors import TrainerInputError
from cpt_trainer.train.evaluation import EvalResult, general_regression
from cpt_trainer.train.main import prepare


def _single_token_words(tokenizer, count):
    words = []
    for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        word = tokenizer.convert_tokens_to_string([token])
        if word.startswith(" ") and word[1:].isalpha() and len(word) > 3:
            if len(tokenizer(word, add_special_tokens=False)["input_ids"]) == 1:
                words.append(word[1:])
        if len(words) == count:
            return words
    raise AssertionError("tokenizer has too few single-token words")


def test_the_harness_scores_a_hand_checked_set(tokenizer, tmp_path):
    a, b, c, d = _single_token_words(tokenizer, 4)
    ids = {w: tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in (a, b, c, d)}
    vocab = len(tokenizer)

    def logits_fn(input_ids):  # the same preference at every position: a > b > c > everything else
        row = torch.zeros(vocab)
        row[ids[a]], row[ids[b]], row[ids[c]] = 5.0, 3.0, 1.0
        return row.expand(input_ids.shape[0], input_ids.shape[1], vocab)

    rows = [
        {"question": "one", "choices": [a, b], "answer": 0},  # right: a
        {"question": "two", "choices": [c, a], "answer": 1},  # right: a
        {"question": "three", "choices": [b, c, d], "answer": 0},  # right: b
        {"question": "four", "choices": [c, b], "answer": 0},  # wrong: b wins
    ]
    path = tmp_path / "hand.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    bench = Benchmark("hand", read_task_file(path, "hand", limit=100), tmp_path / "work")
    score = bench.score(logits_fn, tokenizer, torch.device("cpu"), max_length=64)
    assert score.accuracy == pytest.approx(0.75)
    assert score.stderr == pytest.approx(math.sqrt(0.75 * 0.25 / 3))  # sample std / sqrt(n)
    assert score.items == 4


def _choice_loglikelihood(model, tokenizer, question, choice):
    ctx = [tokenizer.bos_token_id] + tokenizer(question, add_special_tokens=False)["input_ids"]
    cont = tokenizer(" " + choice, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids[:, :-1]).logits[0], -1)
    return sum(float(logp[len(ctx) - 1 + k, t]) for k, t in enumerate(cont))


def test_a_base_model_that_knows_general_text_scores_well_above_chance(general_base_model, tokenizer, cloze_task, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(str(general_base_model), local_files_only=True).eval()
    items = read_task_file(cloze_task, "cloze", limit=1000)
    bench = Benchmark("cloze", items, tmp_path / "work")
    score = bench.score(lambda ids: model(input_ids=ids, use_cache=False).logits, tokenizer, torch.device("cpu"), 64)
    # Independently of the harness: the share of items whose right choice has the highest log-likelihood.
    right = 0
    for item in items:
        lls = [_choice_loglikelihood(model, tokenizer, item.question, ch) for ch in item.choices]
        right += max(range(len(lls)), key=lls.__getitem__) == item.answer
    assert score.accuracy == pytest.approx(right / len(items))
    assert score.accuracy > 0.5, score  # chance is 0.25 with 4 choices


def _benchmark_run(make_config, general_base_model, cloze_task, tmp_path, alpha, lr, name):
    path = make_config(
        f"{name}.json",
        model={"uri": str(general_base_model)},
        data={"alpha": alpha},
        optim={"learning_rate": lr, "min_learning_rate": lr / 10, "warmup_fraction": 0.0},
        batch={"micro_batch_size": 4, "global_batch_size": 8, "total_steps": 40},
        eval={"interval": 5, "max_batches": 1, "general": [{"name": "cloze", "kind": "lm_eval", "uri": str(cloze_task), "limit": 80}],
              "forgetting_threshold": 0.05, "patience": 3, "min_standard_errors": 1.0},
        checkpoint={"interval": 1000, "uri": str(tmp_path / f"ck-{name}")},
    )  # fmt: skip
    run = prepare(load_config(path, TrainerConfig))
    trainer = run.trainer
    points, results = [], []
    try:
        trainer.evaluate()
        for _ in range(8):
            for _ in range(5):
                trainer.train_step()
            result = trainer.evaluate()
            results.append(result)
            points.append(EvalPoint(trainer.step, trainer.regression(result)))
    finally:
        run.close()
    return trainer.baseline, results, points


def test_pure_domain_training_at_a_high_lr_loses_accuracy_and_the_monitor_halts_on_it(
    make_config, general_base_model, cloze_task, tmp_path
):
    baseline, results, points = _benchmark_run(make_config, general_base_model, cloze_task, tmp_path, 1.0, 1e-2, "forget")
    assert set(baseline.general) == {"cloze"} and baseline.higher_is_better["cloze"]  # accuracy is the only general eval
    final = results[-1]
    assert final.general["cloze"] < baseline.general["cloze"] * 0.8, (baseline.general, final.general)
    decision = decide_forgetting(points, threshold=0.05, patience=3)
    assert decision.exceeded, points
    assert decision.regression == pytest.approx((baseline.general["cloze"] - final.general["cloze"]) / baseline.general["cloze"])


def test_a_healthy_run_is_never_halted(make_config, general_base_model, cloze_task, tmp_path):
    _baseline, _results, points = _benchmark_run(make_config, general_base_model, cloze_task, tmp_path, 0.3, 3e-4, "healthy")
    for i in range(1, len(points) + 1):
        assert not decide_forgetting(points[:i], threshold=0.05, patience=3).exceeded, points


def _noisy_flat_series(seed, n_items=200, p=0.6, evals=200):
    rng = random.Random(seed)

    def measure(step):
        right = sum(rng.random() < p for _ in range(n_items))
        acc = right / n_items
        se = math.sqrt(acc * (1 - acc) / (n_items - 1))
        return EvalResult(step, None, {"bench": acc}, {"bench": True}, {"bench": se})

    return measure(0), [measure(step) for step in range(1, evals + 1)]


def test_a_noisy_but_flat_benchmark_never_halts_with_the_stderr_rule():
    baseline, series = _noisy_flat_series(seed=3)
    with_rule = [EvalPoint(r.step, general_regression(r, baseline, min_standard_errors=2.0)) for r in series]
    without = [EvalPoint(r.step, general_regression(r, baseline, min_standard_errors=0.0)) for r in series]
    assert not any(decide_forgetting(with_rule[:i], 0.03, 3).exceeded for i in range(1, len(series) + 1))
    # The same noise crosses a 3 % threshold three times in a row without the rule: the rule is what holds.
    assert any(decide_forgetting(without[:i], 0.03, 3).exceeded for i in range(1, len(series) + 1))


def test_a_drop_beyond_the_noise_still_counts_under_the_stderr_rule():
    base = EvalResult(0, None, {"bench": 0.60}, {"bench": True}, {"bench": 0.035})
    small = EvalResult(5, None, {"bench": 0.57}, {"bench": True}, {"bench": 0.035})  # 5 % down, < 1 se of the difference
    large = EvalResult(10, None, {"bench": 0.45}, {"bench": True}, {"bench": 0.035})  # 25 % down, > 3 se
    better = EvalResult(15, None, {"bench": 0.66}, {"bench": True}, {"bench": 0.034})
    assert general_regression(small, base, 1.0) == 0.0
    assert general_regression(small, base, 0.0) == pytest.approx(0.05)
    assert general_regression(large, base, 1.0) == pytest.approx(0.25)
    assert general_regression(better, base, 1.0) == pytest.approx(-0.10)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "task file not found"),
        ('{"question": "q", "choices": ["a"], "answer": 0}\n', "row 0"),
        ('{"question": "q", "choices": ["a", "b"], "answer": 2}\n', "answer: index into choices"),
        ("not json\n", "cannot be read"),
    ],
)
def test_a_task_file_that_cannot_be_used_is_refused_naming_the_eval(make_config, tmp_path, content, message):
    task = tmp_path / "task.jsonl"
    if content is not None:
        task.write_text(content, encoding="utf-8")
    report = tmp_path / "termination-log"
    path = make_config(eval={"general": [{"name": "mmlu-mini", "kind": "lm_eval", "uri": str(task)}]},
                       termination_message_path=str(report))  # fmt: skip
    with pytest.raises(TrainerInputError) as err:
        prepare(load_config(path, TrainerConfig))
    assert "eval.general mmlu-mini" in str(err.value) and message in str(err.value)
    # What the operator reads from the pod's termination message (EvaluationUnavailable).
    written = json.loads(report.read_text())
    assert written == {"reason": "EvaluationUnavailable", "eval": "mmlu-mini", "message": str(err.value)}
