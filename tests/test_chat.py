"""``litgpt-clone chat`` driven through a stdin pipe in a subprocess: every reply must be transformers' greedy reply
to the conversation so far (rendered by transformers' ``apply_chat_template``), across turns, ``/reset``,
``/exit``, Ctrl-D and a conversation that outgrows the context."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from test_generate import CHATML, checkpoint, cli, hf_greedy, models_root  # noqa: F401  (fixture)

NEW = 8


@pytest.fixture(scope="module")
def chat_model(models_root):
    """A Llama whose context is 160 tokens, with a ChatML template."""
    hf_model, native = checkpoint(models_root, "llama", chat_template=CHATML, max_positions=160)
    return hf_model, native, AutoTokenizer.from_pretrained(native)


def reply(chat_model, messages) -> str:
    """transformers' greedy reply to ``messages``."""
    hf_model, _, tok = chat_model
    ids = tok(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False), add_special_tokens=False)["input_ids"]
    stop_ids = {tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>")}
    return tok.decode(hf_greedy(hf_model, ids, NEW, stop_ids))


def run_chat(native, stdin: str, *args):
    return cli("chat", native, "--temperature", 0, "--max_new_tokens", NEW, *args, stdin=stdin)


def replies(stdout: str) -> list[str]:
    """The assistant's replies, in order (each ends with a newline before the next prompt)."""
    return [part.split("\n>> You: ")[0].rstrip("\n") for part in stdout.split(">> Assistant: ")[1:]]


def test_two_turns_one_of_several_lines_reset_and_exit(chat_model):
    _, native, _ = chat_model
    # u2 between \"\"\" lines: one message, whose text is never a command (a C comment starts with /)
    u1, u2 = "Tell me a story about llamas", "// And then?\nWhere did they go?"
    proc = run_chat(native, f'{u1}\n"""{u2}\n"""\n/reset\n{u1}\n/exit\n{u2}\n', "--system", "You are brief.")
    system = {"role": "system", "content": "You are brief."}
    r1 = reply(chat_model, [system, {"role": "user", "content": u1}])
    r2 = reply(chat_model, [system, {"role": "user", "content": u1}, {"role": "assistant", "content": r1}, {"role": "user", "content": u2}])
    assert r1 != r2
    assert replies(proc.stdout) == [r1, r2, r1]  # after /reset the first message gets the first reply; /exit ends it
    assert "(new conversation)" in proc.stderr and proc.stderr.count("tokens/s") == 3


def test_ctrl_d_ends_the_chat(chat_model):
    _, native, _ = chat_model
    proc = run_chat(native, "Hello there\n")  # stdin ends: EOF, like Ctrl-D
    assert replies(proc.stdout) == [reply(chat_model, [{"role": "user", "content": "Hello there"}])]
    assert proc.stdout.endswith(">> You: \n")


def test_history_longer_than_the_context_drops_the_oldest_turns(chat_model):
    _, native, _ = chat_model
    turns = [
        "Once upon a time there was a small model that wanted to generate stories about llamas and their food.",
        "The quick brown fox jumps over the lazy dog. Language models read tokens and write them back as text.",
        "for i in range(10): print(i, 'is', 'even' if i % 2 == 0 else 'odd')",
    ]
    too_long = "llama " * 200
    proc = run_chat(native, "\n".join([*turns, too_long, "Hi"]) + "\n")
    got = replies(proc.stdout)
    messages = [{"role": "user", "content": turns[0]}]
    assert got[0] == reply(chat_model, messages)
    # turn 2 fits with turn 1; turn 3 does not: the first exchange is dropped, and the note says so
    messages += [{"role": "assistant", "content": got[0]}, {"role": "user", "content": turns[1]}]
    assert got[1] == reply(chat_model, messages)
    assert got[2] == reply(chat_model, [{"role": "user", "content": turns[1]}, {"role": "assistant", "content": got[1]}, {"role": "user", "content": turns[2]}])
    assert "(dropped the oldest 2 message(s): the conversation outgrew the context of 160 tokens)" in proc.stderr
    # a message that cannot fit even alone is refused with the numbers, and the chat goes on where it was
    assert "more than the context of 160 tokens: shorten it" in proc.stderr
    assert len(got) == 4 and proc.returncode == 0
    history = [{"role": "user", "content": turns[1]}, {"role": "assistant", "content": got[1]}, {"role": "user", "content": turns[2]},
               {"role": "assistant", "content": got[2]}, {"role": "user", "content": "Hi"}]
    _, _, tok = chat_model
    while len(tok.apply_chat_template(history, add_generation_prompt=True, tokenize=False)) and len(
        tok(tok.apply_chat_template(history, add_generation_prompt=True, tokenize=False), add_special_tokens=False)["input_ids"]
    ) + NEW > 160:
        history = history[2:]
    assert len(history) > 1  # the earlier conversation is still there
    assert got[3] == reply(chat_model, history)


def test_impossible_sampling_settings_stop_before_the_first_turn(chat_model):
    """Sampling settings that cannot work end the command with one line before the prompt appears (they used to end
    it after the user had typed a first message)."""
    _, native, _ = chat_model
    for args, message in (
        (["--max_new_tokens", 0], "max_new_tokens is 0"), (["--temperature", -1], "temperature is -1.0"),
        (["--max_new_tokens", 160], "--max_new_tokens 160 leaves no room for a message in the model's context of 160 tokens"),
        (["--style", "bogus"], "unknown chat style 'bogus': use one of auto, alpaca, chatml"),
    ):
        proc = cli("chat", native, *args, stdin="Hello there\n", check=False)
        assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [proc.stderr.strip()] and message in proc.stderr
        assert ">> You:" not in proc.stdout + proc.stderr


def test_a_system_message_the_template_refuses_stops_before_the_first_turn(models_root):
    """A template that refuses system messages (Gemma's, Mistral's) with --system: one line at start-up; the chat
    used to start and then print the refusal on every turn."""
    refuses = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}" + CHATML
    _, native = checkpoint(models_root, "llama", chat_template=refuses)
    proc = cli("chat", native, "--system", "Be brief.", stdin="Hello there\n", check=False)
    assert proc.returncode == 2 and proc.stderr == (
        "error: --system cannot be used with this checkpoint's chat template (the chat template refused the messages:"
        " System role not supported): leave it out\n"), proc.stderr
    assert ">> You:" not in proc.stdout
    assert replies(run_chat(native, "Hello there\n").stdout) != []  # without --system it chats


def test_reset_with_a_seed_gives_the_same_conversation_again(chat_model):
    """Turn i samples with seed + i, counted from the start of the conversation: after /reset the same message gets
    the same sampled reply."""
    _, native, _ = chat_model
    proc = cli("chat", native, "--temperature", 1.0, "--max_new_tokens", NEW, "--seed", 7, stdin="Hi\nMore\n/reset\nHi\nMore\n")
    got = replies(proc.stdout)
    assert len(got) == 4 and got[:2] == got[2:] and got[0] != got[1]


def test_a_base_model_chat_says_what_goes_in_and_survives_bytes_that_are_not_utf8(models_root):
    """Bytes that are not UTF-8 on stdin were a traceback that ended the chat (the tokenizer refuses lone surrogates);
    a checkpoint without a chat template now says that only the latest message goes in; a fallback style's end of
    turn ends a reply (a base model's tokenizer has "<|im_end|>" as text: the reply ran on into made-up turns)."""
    import subprocess
    import sys

    from litgpt_clone.commands.chat import reply_stops

    _, native = checkpoint(models_root, "llama")  # (no chat template)
    proc = subprocess.run([sys.executable, "-m", "litgpt_clone", "chat", str(native), "--temperature", "0", "--max_new_tokens", "4",
                           "--system", "Be brief."], input=b"caf\xe9 ok\n", capture_output=True, timeout=180)
    assert proc.returncode == 0 and b"Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert b"note: your message was not valid UTF-8: its undecodable bytes became U+FFFD" in proc.stderr
    assert (b"note: this checkpoint has no chat template: only your latest message goes in, as plain text (--system is not"
            b" used); pick a format with --style") in proc.stderr
    assert reply_stops("zzz", "chatml") == ["zzz", "<|im_end|>"] and reply_stops(None, "llama3") == ["<|eot_id|>"]
    assert reply_stops(None, None) is None and reply_stops(["a", "b"], "plain") == ["a", "b"]
