"""The serve engine without a server: continuous batching's prefill chunks and decode steps (CUDA graphs on a GPU)
give ``generate``'s greedy tokens as requests come and go. No ``openai`` import here, so ``pytest -m gpu`` collects
the CUDA case on a machine that has only the serve dependencies."""

from __future__ import annotations

import pytest
import torch

from litgpt_clone import LLM
from litgpt_clone.generate import generate
from test_generate import CORPUS, PROMPTS, checkpoint, models_root  # noqa: F401  (fixture)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The references (generate, LLM) run on one thread: on a busy 2-core machine, two threads of tiny matmuls wait
    on each other for milliseconds per op. (test_serve.py and test_serve_lora_eval.py use it too.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_burst_is_prefilled_in_chunks_of_the_token_budget_with_the_same_answers(models_root):  # noqa: F811
    """The engine prefills waiting requests together up to ``prefill_tokens`` padded tokens a pass (1,024 on a CPU; on
    a GPU at least ``data.batching.free_tokens``); chunked or not, each request gets the greedy answer of ``generate``."""
    from litgpt_clone.data.batching import free_tokens
    from litgpt_clone.serve.engine import PREFILL_TOKEN_BUDGET, Engine

    _, native = checkpoint(models_root, "llama")
    llm = LLM.load(native, device="cpu")
    prompts = [(CORPUS * 4)[i * 7 : i * 7 + 1500] for i in range(6)]
    ids = [llm.tokenizer.encode(p).tolist()[:300] for p in prompts]  # 300 tokens each
    expected = [generate(llm.model, [torch.tensor(x)], 5)[0].tolist() for x in ids]
    assert free_tokens(llm.model.config.n_embd, torch.device("cpu")) == 0
    assert free_tokens(2048, torch.device("cuda")) == 2048 and free_tokens(4096, torch.device("cuda")) == 512
    for budget, per_pass in ((PREFILL_TOKEN_BUDGET, [3, 3]), (2048, [6])):
        engine = Engine(llm.model, llm.tokenizer, max_rows=8)
        assert engine.prefill_tokens == PREFILL_TOKEN_BUDGET  # on a CPU
        engine.prefill_tokens = budget  # what a GPU sets for a 1.1B model
        for i, x in enumerate(ids):
            engine.submit(str(i), dict(ids=x, max_new_tokens=5, temperature=0, top_p=1.0))
        joined, tokens = [], {str(i): [] for i in range(len(ids))}
        prefill = engine.prefill
        engine.prefill = lambda rows, events: joined.append(len(rows)) or prefill(rows, events)
        while engine.busy:
            for uid, event in engine.step():
                tokens[uid].append(event)
        assert joined == per_pass
        for i, x in enumerate(ids):
            text = "".join(e["text"] for e in tokens[str(i)])
            assert text == llm.tokenizer.decode(expected[i])


def run_engine(engine, jobs: list[list[int]], new: int, late: int = 3) -> dict[str, str]:
    """Greedy texts of ``jobs`` through ``engine``: all but the last ``late`` submitted first, those after 3 steps."""
    texts = {str(i): "" for i in range(len(jobs))}
    for i, ids in enumerate(jobs):
        if i == len(jobs) - late:
            for _ in range(3):
                for uid, event in engine.step():
                    texts[uid] += event["text"]
        engine.submit(str(i), dict(ids=ids, max_new_tokens=new, temperature=0, top_p=1.0))
    while engine.busy:
        for uid, event in engine.step():
            texts[uid] += event["text"]
    return texts


CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")])


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_decode_steps_give_the_tokens_of_generate_as_requests_come_and_go(models_root, device):  # noqa: F811
    """Requests of different lengths, some joining mid-way (so the batch and cache-length shapes change), get
    ``generate``'s greedy text. On a GPU each decode shape is replayed as a CUDA graph, and the eager engine
    (``cuda_graphs=False``) gives the same text."""
    from litgpt_clone.serve.engine import Engine

    _, native = checkpoint(models_root, "llama")
    llm = LLM.load(native, device=device, precision="32-true")
    jobs = [llm.tokenizer.encode(p).tolist() for p in PROMPTS * 2]
    jobs[1] = (jobs[1] * 20)[:90]  # past one block of 64 slots
    expected = {
        str(i): llm.tokenizer.decode(generate(llm.model, [torch.tensor(x, device=device)], 40, stop_ids=llm.tokenizer.stop_ids)[0])
        for i, x in enumerate(jobs)
    }
    graphed = Engine(llm.model, llm.tokenizer, max_rows=8)
    assert run_engine(graphed, jobs, 40) == expected
    assert len(graphed.steps) >= 3  # (rows, slots, adapters) shapes met
    if device == "cuda":
        assert graphed.graphs and all(step.graph is not None for step in graphed.steps.values())
        assert graphed.prefills and all(step.graph is not None for step, _ in graphed.prefills.values())  # small prefills too
        assert {S for _, S, _ in graphed.steps} <= {64, 128, 256}  # a power of two of 64-slot blocks
        upfront = Engine(llm.model, llm.tokenizer, max_rows=8)
        assert upfront.capture() == 4 * len(upfront_slots(upfront.slots))  # rows 1, 2, 4, 8
        shapes = set(upfront.steps)
        assert run_engine(upfront, jobs, 40) == expected and set(upfront.steps) == shapes  # nothing captured late
        eager = Engine(llm.model, llm.tokenizer, max_rows=8, cuda_graphs=False)
        assert run_engine(eager, jobs, 40) == expected and not eager.graphs
    else:
        assert not graphed.graphs and all(step.graph is None for step in graphed.steps.values())
        assert {S for _, S, _ in graphed.steps} == {64, 128, 192}  # a multiple of 64 past the written slots
        bucketed = Engine(llm.model, llm.tokenizer, max_rows=8)
        bucketed.graphs = True  # the GPU's shapes (on a CPU nothing is captured): slots in powers of two of 64
        assert run_engine(bucketed, jobs, 40) == expected
        assert {S for _, S, _ in bucketed.steps} <= {64, 128, 256} and 256 in {S for _, S, _ in bucketed.steps}
        assert graphed.capture() == 0  # steps are not graphs here: nothing to capture up front
        upfront = Engine(llm.model, llm.tokenizer, max_rows=6)
        upfront.graphs = True
        assert upfront.capture(most_slots=300) == 4 * 4  # rows 1, 2, 4, 6 x slots 64, 128, 256, 512 (the cap's block)
        assert {(B, S) for B, S, _ in upfront.steps} == {(B, S) for B in (1, 2, 4, 6) for S in (64, 128, 256, 512)}
        shapes = set(upfront.steps)
        assert run_engine(upfront, jobs, 40) == expected and set(upfront.steps) == shapes  # every shape was there
        upfront.submit("busy", dict(ids=jobs[0], max_new_tokens=4, temperature=0, top_p=1.0))
        assert upfront.capture() == 0  # never while requests wait or run


@pytest.mark.parametrize("family", ["llama-longrope", "phi3-longrope"])
def test_longrope_rows_take_their_own_factors(models_root, family):  # noqa: F811
    """A longrope model switches to its long factors past the original context (32 positions here). The engine chose
    them for the whole batch, so a short request decoded beside one past the switch got the long factors and other
    text than it gets alone; each row now takes its own. A Phi-3 row crossing the switch recomputes its keys with
    the long factors there, as generate (and transformers) does: the request of 20 tokens crosses it mid-way."""
    from litgpt_clone.serve.engine import Engine

    _, native = checkpoint(models_root, family)
    llm = LLM.load(native, device="cpu", precision="32-true")
    assert llm.model.config.rope_recompute_at_switch == (family == "phi3-longrope")
    gen = torch.Generator().manual_seed(0)
    jobs = [torch.randint(1, llm.model.config.vocab_size, (n,), generator=gen).tolist() for n in (6, 40, 20, 9)]  # 6 + 16 < 32 < 40
    expected = {str(i): llm.tokenizer.decode(generate(llm.model, [torch.tensor(x)], 16)[0]) for i, x in enumerate(jobs)}
    assert run_engine(Engine(llm.model, llm.tokenizer, max_rows=4), jobs, 16, late=1) == expected
    queued = Engine(llm.model, llm.tokenizer, max_rows=4)
    queued.ahead = True  # a GPU's order (the step queued before the last tokens are read): the input is still in flight
    assert run_engine(queued, jobs, 16, late=1) == expected
    llm.model.longrope_rows = False  # (the batch-wide choice: the short rows' text differs, so this test can fail)
    together = generate(llm.model, [torch.tensor(x) for x in jobs], 16)
    assert [llm.tokenizer.decode(t) for t in together] != list(expected.values())


def upfront_slots(slots: int) -> list[int]:
    """The cache lengths ``Engine.capture`` covers: powers of two of 64-slot blocks up to the cache (and 4,096)."""
    return sorted({min(64 * 2 ** k, slots) for k in range(7) if 64 * 2 ** (k - 1) < min(slots, 4096)})


def test_a_step_that_cannot_be_captured_decodes_eagerly(models_root, monkeypatch, capsys):  # noqa: F811
    """When a capture fails (on a GPU: an operation a CUDA graph cannot hold, as bitsandbytes int8 has), the engine
    logs why, stops capturing (also up front) and decodes eagerly with the same tokens. The failure is simulated:
    this machine has no CUDA graphs."""
    from litgpt_clone.serve import engine as engine_module
    from litgpt_clone.serve.engine import Engine

    class Failing(engine_module.GraphedStep):
        def __init__(self, fn, inputs, capture: bool = True, pool=None) -> None:
            if capture:
                raise RuntimeError("operation not permitted when stream is capturing")
            super().__init__(fn, inputs, capture=False)

    _, native = checkpoint(models_root, "llama")
    llm = LLM.load(native, device="cpu", precision="32-true")
    jobs = [llm.tokenizer.encode(p).tolist() for p in PROMPTS]
    expected = {str(i): llm.tokenizer.decode(generate(llm.model, [torch.tensor(x)], 12, stop_ids=llm.tokenizer.stop_ids)[0]) for i, x in enumerate(jobs)}
    engine = Engine(llm.model, llm.tokenizer, max_rows=4)
    engine.graphs = True
    monkeypatch.setattr(engine_module, "GraphedStep", Failing)
    assert engine.capture() == 0 and not engine.graphs and not engine.steps
    assert "decoding without CUDA graphs" in capsys.readouterr().err
    assert run_engine(engine, jobs, 12, late=1) == expected
    assert engine.steps and all(step.graph is None for step in engine.steps.values())


def test_small_prefills_run_through_one_graph_per_bucketed_shape(models_root):  # noqa: F811
    """On a GPU, a prefill of at most ``graph_tokens`` padded tokens replays a CUDA graph of (rows, length): rows a
    power of two (extra rows repeat the last prompt), length a multiple of 64 (more left padding), the K/V in
    scratch caches every graph shares. Here nothing is captured, but the same bucketing, padding and copies run:
    every request still gets ``generate``'s greedy text."""
    from litgpt_clone.serve.engine import Engine

    _, native = checkpoint(models_root, "llama")
    llm = LLM.load(native, device="cpu", precision="32-true")
    jobs = [llm.tokenizer.encode(p).tolist() for p in PROMPTS * 2]
    jobs[1] = (jobs[1] * 20)[:90]  # 90 tokens: a 128-token bucket
    expected = {
        str(i): llm.tokenizer.decode(generate(llm.model, [torch.tensor(x)], 30, stop_ids=llm.tokenizer.stop_ids)[0])
        for i, x in enumerate(jobs)
    }
    engine = Engine(llm.model, llm.tokenizer, max_rows=8)
    assert engine.graph_tokens == 0  # a CPU: every prefill runs eagerly
    engine.graphs, engine.graph_tokens = True, 512
    assert run_engine(engine, jobs, 30) == expected
    shapes = set(engine.prefills)
    assert shapes and all(rows & (rows - 1) == 0 and length % 64 == 0 and rows * length <= 512 for rows, length in shapes)
    assert (4, 128) in shapes  # the first three prompts joined together: 3 rows -> 4, 90 tokens -> 128
    assert len(engine.scratch) == llm.model.config.n_layer and engine.scratch[0][0].numel() == 512 * llm.model.config.n_query_groups * llm.model.config.head_size
    engine.graph_tokens = 0  # the same requests prefilled eagerly: the same texts, no new graph
    assert run_engine(engine, jobs, 30) == expected and set(engine.prefills) == shapes
    exact = (jobs[0] * 30)[:64]  # a prompt of exactly one bucket, alone: no padding at all
    engine.graph_tokens = 512
    want = llm.tokenizer.decode(generate(llm.model, [torch.tensor(exact)], 30, stop_ids=llm.tokenizer.stop_ids)[0])
    assert run_engine(engine, [exact], 30, late=0) == {"0": want} and (1, 64) in engine.prefills


def test_reading_each_step_after_queuing_the_next_gives_the_same_events(models_root, monkeypatch):  # noqa: F811
    """On a GPU the engine reads a forward's tokens on the host only after it has queued the next forward (``ahead``):
    the device runs step i + 1 while the host detokenizes step i. Here on a CPU the same order of work, with every
    forward's outputs spoiled when the next one runs (a CUDA graph's replay overwrites its outputs), gives the events
    of reading each forward at once, for rows that stop on a string, run out of tokens, ask for log-probabilities or
    sample with a seed; a row cancelled while a step of it is in flight sends nothing more."""
    from litgpt_clone.serve import engine as engine_module
    from litgpt_clone.serve.engine import Engine

    outputs: list[torch.Tensor] = []

    class Overwritten(engine_module.GraphedStep):  # what replays do to earlier outputs of any graph of the pool
        def __call__(self, *inputs):
            for out in outputs:
                out.fill_(float("nan"))
            outputs.clear()
            out = super().__call__(*inputs).clone()
            outputs.append(out)
            return out

    _, native = checkpoint(models_root, "llama")
    llm = LLM.load(native, device="cpu", precision="32-true")
    ids = [llm.tokenizer.encode(p).tolist() for p in PROMPTS * 3]
    greedy = dict(temperature=0, top_p=1.0)
    jobs = [dict(ids=x, max_new_tokens=6 + 5 * i, **greedy) for i, x in enumerate(ids)]
    jobs[1]["stop"] = [llm.tokenizer.decode(generate(llm.model, [torch.tensor(ids[1])], 8)[0][5:7])]  # ends early
    jobs[2]["logprobs"] = 2
    jobs[4].update(temperature=0.9, top_p=0.9, seed=7)

    def events_of(engine, cancel: str = "") -> dict[str, list[dict]]:
        got: dict[str, list[dict]] = {str(i): [] for i in range(len(jobs))}
        for i, job in enumerate(jobs):
            engine.submit(str(i), dict(job))
        steps = 0
        while engine.busy:
            for uid, event in engine.step():
                got[uid].append(event)
            steps += 1
            if steps == 4 and cancel:
                engine.cancel(cancel)
        return got

    def engine(graphs: bool, ahead: bool, rows: int = 4) -> Engine:
        built = Engine(llm.model, llm.tokenizer, max_rows=rows)
        built.ahead, built.graphs, built.graph_tokens = ahead, graphs, 512 if graphs else 0  # graphs: prefills too
        return built

    monkeypatch.setattr(engine_module, "GraphedStep", Overwritten)
    for graphs, rows in ((False, 4), (True, 4), (False, 16)):  # 16 rows: all join at once, so no prefill comes
        reference = engine(graphs, ahead=False, rows=rows)  # between the step a row stops at and the next one
        expected = events_of(reference)
        assert expected["1"][-1]["finish_reason"] == "stop" and expected["0"][-1]["completion_tokens"] == 6
        assert all(len(e["top"][0]) == 2 for e in expected["2"]) and expected["4"][-1]["completion_tokens"] == 26
        ahead = engine(graphs, ahead=True, rows=rows)
        assert events_of(ahead) == expected
        assert ahead.steps and (ahead.prefills or not graphs) and not ahead.busy
        # no decoding for a row whose last token is in flight; one step more at most for the row that stops on a string
        assert reference.stats.rows <= ahead.stats.rows <= reference.stats.rows + 1
    cancelled = events_of(engine(False, ahead=True, rows=16), cancel="3")
    assert 0 < len(cancelled["3"]) < len(expected["3"]) and "finish_reason" not in cancelled["3"][-1]
    assert {uid: e for uid, e in cancelled.items() if uid != "3"} == {uid: e for uid, e in expected.items() if uid != "3"}
