"""``litgpt-clone serve`` with LoRA adapters, log-probabilities and lm-eval, against references nobody here wrote
the server for:

- lm-eval's own ``local-completions`` model (the OpenAI-completions client it ships) runs the local tasks in
  tests/eval_tasks against the server: every loglikelihood equals our in-process lm-eval model's (``LitGPTLM``) on
  the same checkpoint within 1e-4, with the same greedy flags, generations and metrics;
- ``logprobs``/``echo`` equal log_softmax of the model's logits;
- two LoRA adapters in the real ``finetune lora`` checkpoint format, served over one base and chosen per request
  (also mixed in one batch), give the greedy text of their ``merge_lora`` merged checkpoints; so does one of them
  exported to PEFT's format (``convert to_peft``; tests/test_peft.py checks that format against peft itself).
"""

from __future__ import annotations

import os
import re

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # before datasets is imported
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import torch

from litgpt_clone import LLM
from litgpt_clone.commands.convert import convert_to_peft
from litgpt_clone.commands.finetune import merge_lora
from litgpt_clone.config import Config
from litgpt_clone.lora import LoRAArgs, inject_lora, lora_state
from litgpt_clone.model import GPT
from litgpt_clone.training.checkpoint import write_checkpoint
from litgpt_clone.training.run import plain
from test_generate import PROMPTS, checkpoint, models_root  # noqa: F401  (fixture)
from test_serve import one_thread, running_server  # noqa: F401  (fixture)

NAME = "tiny/base"
TASKS = Path(__file__).parent / "eval_tasks"
ADAPTERS = {
    "sql": LoRAArgs(r=4, alpha=8, dropout=0.0),  # query + value of the fused qkv
    "chat": LoRAArgs(r=2, alpha=4, dropout=0.0, key=True, projection=True, mlp=True, head=True, layers=(1, 2)),
}


def write_adapter(base: Path, out: Path, args: LoRAArgs, seed: int) -> Path:
    """A LoRA checkpoint as ``finetune lora`` writes it (lora.safetensors, lora_config.yaml, hyperparameters.yaml),
    with random nonzero B so that the adapter changes the model's answers."""
    model = GPT.from_checkpoint(base)
    with torch.random.fork_rng():  # A's random init from the seed, not from whatever ran before in this process
        torch.manual_seed(seed)
        inject_lora(model, args)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    hparams = {"checkpoint_dir": str(base), "lora": plain(args)}
    write_checkpoint(out, {"lora.safetensors": lora_state(model.state_dict())}, Config.from_checkpoint(base), base, hparams, yamls={"lora_config.yaml": plain(args)})
    return out


@pytest.fixture(scope="module")
def setup(models_root, tmp_path_factory):
    """(server url, base folder, {adapter: merged folder}) with the server running the base and both adapters."""
    _, base = checkpoint(models_root, "llama")
    work = tmp_path_factory.mktemp("serve_lora")
    merged = {}
    for seed, (name, args) in enumerate(ADAPTERS.items()):
        folder = write_adapter(base, work / f"lora-{name}", args, seed)
        merge_lora(folder, out_dir=work / f"merged-{name}")
        merged[name] = work / f"merged-{name}"
    # the chat adapter once more, exported as a PEFT folder (what vLLM's --lora-modules takes): served as chat-peft
    convert_to_peft(work / "lora-chat", work / "chat-peft")
    adapters = ",".join(f"{name}={work / f'lora-{name}'}" for name in ADAPTERS) + f",chat-peft={work / 'chat-peft'}"
    with running_server(base, work / "serve.log", "--model_name", NAME, "--adapters", adapters, "--max_new_tokens", "64") as (url, _):
        yield url, base, merged


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)


def test_adapters_match_their_merged_checkpoints(setup):
    url, base, merged = setup
    assert [m.id for m in client(url).models.list().data] == [NAME, *ADAPTERS, "chat-peft"]
    references = {NAME: LLM.load(base, device="cpu"), **{name: LLM.load(folder, device="cpu") for name, folder in merged.items()}}
    expected = {(model, p): llm.generate(p, max_new_tokens=10) for model, llm in references.items() for p in PROMPTS}
    for p in PROMPTS:  # the adapters change the answers (else this test could not fail)
        assert len({expected[(model, p)] for model in references}) == 3
    expected.update({("chat-peft", p): expected[("chat", p)] for p in PROMPTS})
    # every (model, prompt) pair at once: rows with different adapters share decode steps
    pairs = list(expected) * 2

    def ask(pair: tuple[str, str]) -> str:
        model, prompt = pair
        return client(url).completions.create(model=model, prompt=prompt, max_tokens=10, temperature=0).choices[0].text

    with ThreadPoolExecutor(len(pairs)) as pool:
        assert list(pool.map(ask, pairs)) == [expected[pair] for pair in pairs]
    chat = list(client(url).chat.completions.create(model="sql", messages=[{"role": "user", "content": "Hi"}], max_tokens=6, temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chat) == references["sql"].chat([{"role": "user", "content": "Hi"}], max_new_tokens=6)
    # each response names the model the request asked for (it named the base model for every adapter)
    assert {c.model for c in chat} == {"sql"}
    assert client(url).completions.create(model="chat", prompt="Hi", max_tokens=2).model == "chat"
    assert client(url).completions.create(model=NAME, prompt="Hi", max_tokens=2).model == NAME


def test_chat_without_a_template_takes_one_user_message(setup):
    """This checkpoint has no chat template: its chat prompt is the user message's text alone, so a system message or
    earlier turns would be dropped (they were, silently); they are refused, pointing to /v1/completions."""
    url, base, _ = setup
    for messages in ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                     [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "More"}]):
        with pytest.raises(openai.BadRequestError, match="has no chat template") as error:
            client(url).chat.completions.create(model=NAME, messages=messages, max_tokens=2)
        assert error.value.body["param"] == "messages"


def test_logprobs_and_echo_equal_the_models_log_softmax(setup):
    url, base, _ = setup
    llm = LLM.load(base, device="cpu")
    ids = llm.encode(PROMPTS[1]).tolist()
    with torch.no_grad():
        logprobs = torch.log_softmax(llm.model(torch.tensor([ids])).float(), dim=-1)[0]  # (T, V)
    out = client(url).completions.create(model=NAME, prompt=PROMPTS[1], max_tokens=0, echo=True, logprobs=3).choices[0]
    lp = out.logprobs
    assert out.text == PROMPTS[1] and out.finish_reason == "length"
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None and len(lp.token_logprobs) == len(ids)
    torch.testing.assert_close(torch.tensor(lp.token_logprobs[1:]), logprobs[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0], atol=1e-4, rtol=0)
    for position, (top, own) in enumerate(zip(lp.top_logprobs[1:], lp.token_logprobs[1:])):
        assert max(top.values()) == pytest.approx(float(logprobs[position].max()), abs=1e-4) and own in top.values()
        assert len(top) <= 4  # the top 3 (fewer if two decode to the same text) and the prompt's own token
    assert "".join(lp.tokens) == out.text and lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(len(ids))]
    # a prompt as long as the whole context can still be scored (lm-eval's rolling windows are), not continued
    context = min(Config.from_checkpoint(base).block_size, 4096)
    whole = (ids * (context // len(ids) + 1))[:context]
    scored = client(url).completions.create(model=NAME, prompt=[whole], max_tokens=0, echo=True, logprobs=1).choices[0]
    assert len(scored.logprobs.token_logprobs) == context and scored.finish_reason == "length"
    full = f"the prompt has {context} tokens, all of the model's context of {context} tokens: leave room for a new token (at most {context - 1} tokens"
    with pytest.raises(openai.BadRequestError, match=re.escape(full)):
        client(url).completions.create(model=NAME, prompt=[whole], max_tokens=1)
    # generated tokens: greedy, so each one is its position's best, and the text follows the echoed prompt
    gen = client(url).completions.create(model=NAME, prompt=[ids], max_tokens=5, echo=True, logprobs=1, temperature=0).choices[0]
    assert gen.text == PROMPTS[1] + llm.generate(PROMPTS[1], max_new_tokens=5)
    assert len(gen.logprobs.tokens) == len(ids) + 5 and gen.logprobs.text_offset[len(ids)] == len(PROMPTS[1])
    assert all(lp == max(top.values()) for lp, top in zip(gen.logprobs.token_logprobs[len(ids):], gen.logprobs.top_logprobs[len(ids):]))
    assert all(top[token] == lp for token, lp, top in zip(gen.logprobs.tokens[1:], gen.logprobs.token_logprobs[1:], gen.logprobs.top_logprobs[1:]))
    assert gen.logprobs.token_logprobs[len(ids)] == pytest.approx(float(logprobs[-1].max()), abs=1e-4)
    # streamed: the same text, tokens, log-probabilities and offsets, spread over the chunks
    chunks = [c.choices[0] for c in client(url).completions.create(model=NAME, prompt=[ids], max_tokens=5, echo=True, logprobs=1, temperature=0, stream=True)]
    assert "".join(c.text for c in chunks) == gen.text
    for field in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
        assert [x for c in chunks if c.logprobs for x in getattr(c.logprobs, field)] == getattr(gen.logprobs, field)


def test_logprobs_of_tokens_inside_a_character(setup):
    """A character split over several tokens (the UTF-8 bytes of byte-level BPE): chat logprobs give each token's
    bytes (they were null), which add up to the text's bytes, and the completion tokens show a partial token in
    OpenAI's ``bytes:\\x..`` form (it was "\ufffd"). The token that completes a character is the whole character in
    ``tokens`` and under that key in ``top_logprobs`` (it was there in its bytes form, so ``top[tokens[i]]`` failed)."""
    url, base, _ = setup
    llm = LLM.load(base, device="cpu")
    text = "日本 😀 café"
    ids = llm.encode(text).tolist()
    assert len(ids) > len(text.split()) + 4  # (the characters are split into byte tokens)
    scored = client(url).completions.create(model=NAME, prompt=[ids], max_tokens=0, echo=True, logprobs=1).choices[0]
    assert scored.text == text
    partial = [t for t in scored.logprobs.tokens if t.startswith("bytes:")]
    assert partial and all(re.fullmatch(r"bytes:(\\x[0-9a-f]{2})+", t) for t in partial)
    assert "".join(t for t in scored.logprobs.tokens if not t.startswith("bytes:")) == text
    assert not any("\ufffd" in t for t in scored.logprobs.tokens)
    lp = scored.logprobs
    completing = [i for i, t in enumerate(lp.tokens) if not t.startswith("bytes:") and i and lp.tokens[i - 1].startswith("bytes:")]
    assert [lp.tokens[i] for i in completing] == ["日", " 😀"]  # whole characters, made with the bytes before them
    for token, logprob, top in zip(lp.tokens[1:], lp.token_logprobs[1:], lp.top_logprobs[1:]):
        assert top[token] == logprob and list(top.values()) == sorted(top.values(), reverse=True), (token, top)
    reply = client(url).chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=24, temperature=0, logprobs=True, top_logprobs=2)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens and all(isinstance(c.bytes, list) for c in content)
    assert bytes(b for c in content for b in c.bytes).decode(errors="replace").startswith(reply.choices[0].message.content)
    assert all(isinstance(t.bytes, list) for c in content for t in c.top_logprobs)


def test_lm_eval_local_completions_matches_our_lm_eval_model(setup, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from litgpt_clone.evaluate.lm import LitGPTLM

    url, base, _ = setup
    for src in TASKS.iterdir():  # the task YAMLs with absolute data paths
        (tmp_path / src.name).write_text(src.read_text().replace("tests/eval_tasks/", f"{tmp_path}/"))
    kwargs = dict(
        tasks=["tiny_mc", "tiny_gen"], task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False), log_samples=True, bootstrap_iters=0,
        random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0,
    )
    served = simple_evaluate(
        model="local-completions", model_args=dict(base_url=f"{url}/v1/completions", model=NAME, tokenizer_backend="huggingface", tokenizer=str(base), num_concurrent=4),
        **kwargs,
    )
    ours = simple_evaluate(model=LitGPTLM(llm=LLM.load(base, device="cpu"), batch_size=4), **kwargs)
    a = [r for s in served["samples"]["tiny_mc"] for r in s["resps"]]
    b = [r for s in ours["samples"]["tiny_mc"] for r in s["resps"]]
    assert len(a) == 21  # 6 questions, 21 choices
    torch.testing.assert_close(torch.tensor([r[0][0] for r in a]), torch.tensor([r[0][0] for r in b]), atol=1e-4, rtol=0)
    assert [r[0][1] for r in a] == [r[0][1] for r in b]
    assert [s["resps"] for s in served["samples"]["tiny_gen"]] == [s["resps"] for s in ours["samples"]["tiny_gen"]]
    for task, metrics in (("tiny_mc", ("acc,none", "acc_norm,none")), ("tiny_gen", ("exact_match,none",))):
        assert [served["results"][task][m] for m in metrics] == [ours["results"][task][m] for m in metrics]


def test_unusable_adapters_are_one_line_errors(setup, models_root, tmp_path, capsys):  # noqa: F811
    from litgpt_clone.__main__ import main

    _, base, _ = setup
    _, other_base = checkpoint(models_root, "qwen3")
    foreign = write_adapter(other_base, tmp_path / "lora-qwen3", ADAPTERS["sql"], seed=0)
    (tmp_path / "empty").mkdir()
    capsys.readouterr()
    cases = [
        ("oops", "is not name=folder"),
        (f"a={tmp_path / 'empty'}", "is not a LoRA adapter"),
        (f"{NAME}={foreign}", f"the name '{NAME}' is used twice"),
        (f"q={foreign}", "do not fit this model at transformer.h.0.attn.qkv (query): trained on another base model"),
    ]
    for adapters, message in cases:
        with pytest.raises(SystemExit) as err:
            main(["serve", str(base), "--model_name", NAME, "--adapters", adapters])
        lines = capsys.readouterr().err.strip().splitlines()
        assert err.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
