"""Text <-> token ids for a checkpoint folder, over the two formats LLM checkpoints ship their tokenizer in.

- ``tokenizer.json``: the Hugging Face ``tokenizers`` library; used whenever the file is there.
- ``tokenizer.model``: SentencePiece; used when there is no tokenizer.json.

``Tokenizer(dir).encode(text)`` gives the ids that
``transformers.AutoTokenizer.from_pretrained(dir)(text)["input_ids"]`` gives (transformers 5), so a model sees here
the ids it sees under transformers. What that takes:

- tokenizer.json: the file's own pipeline. BOS/EOS are what its post-processor adds (transformers 5 ignores
  ``add_bos_token``/``add_eos_token`` of tokenizer_config.json when there is a tokenizer.json). We encode without
  the post-processor and add BOS ourselves, so that ``bos=`` can turn it on or off.
- tokenizer.model: sentencepiece, run the way transformers 5 runs the tokenizer it builds from the file:

  - added tokens are split out of the text first, as their ids, so that the ``<s>`` of a rendered chat template is
    BOS. They are the special tokens the checkpoint names (tokenizer_config.json's ``bos_token``, ``eos_token``,
    ``unk_token``, ``pad_token``, any other ``<name>_token``; else special_tokens_map.json's; else the model's own
    ``<s>``, ``</s>``, ``<unk>``), its ``additional_special_tokens`` or ``extra_special_tokens`` (where it lists
    none: every control symbol of the model, e.g. ``[INST]`` or ``<start_of_turn>``) and each entry of
    ``added_tokens_decoder`` (else of added_tokens.json), special or not; one with ``lstrip``/``rstrip`` takes the
    whitespace before/after it along. A string without an id (neither in the model nor given one) is not split.
    ``decode(skip_special_tokens=True)`` leaves out the special ones.
  - the "▁" in front of each part between them: a text that starts with a space gets no second one (" Hi" is
    "▁Hi"), and only the part at the start of the text gets one, unless tokenizer_config.json says
    ``"legacy": true``, which gives one to every part ("<s>Hi" is "<s>", "H", "i" but "<s>", "▁H", "i" with
    legacy). That is ``LlamaTokenizer``'s pipeline, which transformers uses for ``"tokenizer_class":
    "LlamaTokenizer"`` (``CodeLlamaTokenizer``: never legacy). For any other class, or none, it converts the file
    generically, with legacy on by default, where each part is exactly sentencepiece's (" Hi" is "▁▁Hi", "<s>Hi"
    is "<s>", "▁H", "i"); ``"legacy": false`` there is as for LlamaTokenizer.
  - BOS only where tokenizer_config.json says ``"add_bos_token": true`` (absent means no).

Where transformers 5 does something else, and we do not follow:

- ``eos``: EOS is added only when asked (``eos=True``), even if the checkpoint says ``add_eos_token``.
- tokenizer.json with a model-specific ``tokenizer_class``: transformers 5 rebuilds that class's hard-coded pipeline
  from the file's vocab and merges instead of running the file's. We do the same for ``LlamaTokenizer`` and
  ``CodeLlamaTokenizer`` on a SentencePiece-style file (Llama 2, TinyLlama; not for the model types transformers
  runs such a file for as written, Mistral's and Phi-3's: see ``_llama_pipeline``) and run any other file as it is (for the classes of real checkpoints, e.g.
  ``Qwen2Tokenizer`` or ``GemmaTokenizer``, the file is that pipeline already).
- tokenizer.model with ``LlamaTokenizer``: a model trained with a normalization rule (``nmt_nfkc``, whitespace
  collapsing) is normalized by sentencepiece, which transformers skips (collapsing strips the spaces at the ends of
  each part between added tokens too: "Hi </s>" loses its "▁"); a model trained without
  ``add_dummy_prefix`` gets no "▁" in front, which transformers adds; its user-defined symbols are not added
  tokens here (sentencepiece keeps them whole, without transformers' rule for the "▁" after an added token);
  ``"add_prefix_space": false`` is not read. Llama-style models (identity normalization, dummy prefix, no
  user-defined symbols) differ in none of these.
- tokenizer.model: a special token named in tokenizer_config.json that is not in the model (a ``pad_token``
  nobody gave an id) gets a new id past the model's vocabulary under transformers; here it stays text. An
  ``added_tokens_decoder`` id past the model's vocabulary is used as written; transformers numbers such tokens on
  from the model's last id, which is the same unless the ids leave a gap.
- tokenizer.model with other classes that transformers builds by hand (``GemmaTokenizer``, ``T5Tokenizer``, ...):
  their own rules for the "▁" are not followed; Gemma's models have no dummy prefix, where they agree.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path
from typing import NamedTuple, Optional, Sequence, Union

import torch

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
)
"""The files of a checkpoint folder that make up its tokenizer: copy every one that exists when converting a
checkpoint (``config.json``, where ``Tokenizer`` also looks for ``bos_token_id``/``eos_token_id``, is the model's)."""
CHAT_TEMPLATE_DIR = "additional_chat_templates"
"""transformers' folder of named chat templates (``tool_use.jinja``, ...), beside the default ``chat_template.jinja``."""


def tokenizer_files(folder: Path) -> list[str]:
    """The tokenizer files ``folder`` holds, relative to it: those of ``TOKENIZER_FILES`` and the named chat templates."""
    folder = Path(folder)
    named = sorted(p for p in (folder / CHAT_TEMPLATE_DIR).glob("*.jinja") if p.is_file())
    return [n for n in TOKENIZER_FILES if (folder / n).is_file()] + [f"{CHAT_TEMPLATE_DIR}/{p.name}" for p in named]


ENCODING_VERSION = 3
"""Part of every tokenized-data cache key (``Tokenizer.fingerprint``): raise it when ``encode`` gives other ids for
some checkpoint (2: a Llama checkpoint's SentencePiece-style tokenizer.json runs the pipeline transformers rebuilds; a
SentencePiece part that starts with "▁" gets no second one; 3: that rebuild for every model type transformers does it for)."""


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's table of printable stand-ins for the 256 bytes, which byte-level BPE vocabularies are written in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


_UNICODE_TO_BYTE = {c: b for b, c in _byte_to_unicode().items()}


def _corrupt(path: Path, err: Exception):
    from litgpt_clone.checkpoints.io import CheckpointError

    reason = " ".join(str(err).split())
    return CheckpointError(f"{path} is corrupt ({type(err).__name__}: {reason}): download the checkpoint again (or copy the file from its repo)")


def _read_json(path: Path) -> dict:
    """A JSON object from ``path`` ({} when there is no such file)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise _corrupt(path, err) from None
    if not isinstance(data, dict):
        raise _corrupt(path, ValueError(f"a JSON {type(data).__name__} where an object belongs"))
    return data


def _token_ids(value, path: Path) -> list[int]:
    """``eos_token_id``/``bos_token_id`` as a list of ints (files write one int, a list of them, or null)."""
    ids = value if isinstance(value, list) else [value]
    if not all(i is None or (isinstance(i, int) and not isinstance(i, bool)) for i in ids):
        raise _corrupt(path, ValueError(f"token ids {value!r} are not integers"))
    return [i for i in ids if i is not None]


def _token_content(token: Union[str, dict, None]) -> Optional[str]:
    """tokenizer_config.json writes a special token as ``"<s>"`` or as ``{"content": "<s>", ...}``."""
    return token.get("content") if isinstance(token, dict) else token


FILE_AS_WRITTEN = ("mistral", "mixtral", "ministral", "phi3", "phimoe", "olmo2", "stablelm", "granite", "internlm2", "internlm3", "qwen2")
"""config.json ``model_type``s whose tokenizer.json transformers 5 runs as written although it declares LlamaTokenizer
(found by loading such a file under each model type with transformers 5.24; qwen2 gets Qwen2Tokenizer's own pipeline,
which we do not rebuild). For every other model type, and a tokenizer alone, it rebuilds LlamaTokenizer's."""


def _model_type(checkpoint_dir: Path) -> Optional[str]:
    """config.json's ``model_type`` (None for a folder without one, e.g. a tokenizer alone)."""
    return _read_json(checkpoint_dir / "config.json").get("model_type")


def _llama_pipeline(tokenizer, path: Path, code_llama: bool, config: dict) -> None:
    """Give a SentencePiece-style tokenizer.json the pipeline transformers 5 builds for ``LlamaTokenizer`` and
    ``CodeLlamaTokenizer`` around the file's vocabulary and merges (its ``__init__``): no normalizer, a Metaspace
    pre-tokenizer that puts "▁" in front of the first part of a text only ("always" with ``"legacy": true``, never
    with ``"add_prefix_space": false``), and the matching decoder. Llama 2's and TinyLlama's files normalize instead
    (``Prepend("▁")``), which gave the text after every added token its own "▁": ``[INST] Hi`` came out as
    ``[INST]``, ``▁``, ``▁Hi`` where transformers has ``[INST]``, ``▁Hi``. Transformers runs a byte-level file
    declaring the class, and the files of the model types in ``FILE_AS_WRITTEN`` (Mistral's, Phi-3's), as they are,
    and so do we."""
    from tokenizers import decoders, pre_tokenizers

    if b'"ByteLevel"' in path.read_bytes():
        return
    prefix = config.get("add_prefix_space")
    prefix = True if prefix is None else bool(prefix)
    scheme = "never" if not prefix else "always" if config.get("legacy") is True and not code_llama else "first"
    tokenizer.normalizer = None
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme=scheme, split=False)
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    tokenizer.decoder = decoders.Sequence(steps + ([decoders.Strip(content=" ", left=1)] if prefix or code_llama else []))


class _AddedToken(NamedTuple):
    """A string split out of the text before sentencepiece sees it (transformers' ``AddedToken``)."""

    id: int
    special: bool  # left out by decode(skip_special_tokens=True)
    lstrip: bool  # takes the whitespace before it along
    rstrip: bool  # and after it


_WHITESPACE = "\t\n\v\f\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"
"""What an added token's lstrip/rstrip takes along: Rust's ``char::is_whitespace``, as in tokenizers."""
_WHITESPACE_RUN = re.compile(f"[{re.escape(_WHITESPACE)}]*")


class Tokenizer:
    """The tokenizer of the checkpoint in ``checkpoint_dir``.

    Attributes: ``backend`` ("huggingface" or "sentencepiece"), ``vocab_size`` (added tokens included),
    ``bos_id``/``eos_id`` (None when the checkpoint has none), ``add_bos`` (whether ``encode`` adds BOS by default),
    ``template_tokens`` (the special-token strings a chat template sees: ``bos_token``, ``pad_token``, ...),
    ``stop_ids`` (ids that end generation: EOS and every ``eos_token_id`` of generation_config.json, else of
    config.json) and
    ``chat_template`` (the Jinja source, or None; where there are named templates, a list in tokenizer_config.json or
    ``additional_chat_templates/<name>.jinja`` files, the one named "default", and ``chat_templates`` all of them by name: ``render_for_tokenizer`` takes "tool_use" for a call with
    tools, as transformers does).
    """

    def __init__(self, checkpoint_dir: Union[str, Path]) -> None:
        self.checkpoint_dir = checkpoint_dir = Path(checkpoint_dir)
        config = _read_json(checkpoint_dir / "tokenizer_config.json")

        if (checkpoint_dir / "tokenizer.json").is_file():
            from tokenizers import Tokenizer as HFTokenizer

            self.backend = "huggingface"
            try:
                self._hf = HFTokenizer.from_file(str(checkpoint_dir / "tokenizer.json"))
            except Exception as err:  # tokenizers raises a bare Exception for a file it cannot parse
                raise _corrupt(checkpoint_dir / "tokenizer.json", err) from None
            self._hf.no_padding()  # a file may carry padding/truncation settings; transformers does not apply
            self._hf.no_truncation()  # them unless asked to, and neither do we
            tokenizer_class = str(config.get("tokenizer_class") or "").removesuffix("Fast")
            if tokenizer_class in ("LlamaTokenizer", "CodeLlamaTokenizer") and _model_type(checkpoint_dir) not in FILE_AS_WRITTEN:
                _llama_pipeline(self._hf, checkpoint_dir / "tokenizer.json", tokenizer_class == "CodeLlamaTokenizer", config)
            self.vocab_size = self._hf.get_vocab_size(with_added_tokens=True)
        elif (checkpoint_dir / "tokenizer.model").is_file():
            import sentencepiece

            self.backend = "sentencepiece"
            try:
                self._sp = sentencepiece.SentencePieceProcessor(model_file=str(checkpoint_dir / "tokenizer.model"))
            except (RuntimeError, OSError) as err:
                raise _corrupt(checkpoint_dir / "tokenizer.model", err) from None
            self._dummy_prefix = self._sp.normalize("a").startswith("▁")  # the model puts "▁" before every text
            # how transformers builds it (see the module's docstring): LlamaTokenizer's pipeline, or the generic one
            tokenizer_class = str(config.get("tokenizer_class") or "").removesuffix("Fast")
            llama = tokenizer_class in ("LlamaTokenizer", "CodeLlamaTokenizer")
            legacy = tokenizer_class != "CodeLlamaTokenizer" and bool(config.get("legacy", not llama))
            self._sp_prefix_all = legacy  # a "▁" for every part (Metaspace's prepend_scheme "always"), else "first"
            self._sp_native = legacy and not llama  # each part exactly as sentencepiece encodes it (" Hi": "▁▁Hi")
            self._sp_added = added = self._sp_added_tokens(config)
            # longest first, so that the leftmost match is the longest there ("<s>" is not the start of "<s>x")
            self._sp_split = re.compile("|".join(map(re.escape, sorted(added, key=len, reverse=True)))) if added else None
            self._sp_added_pieces = {token.id: content for content, token in added.items()}
            self._sp_special = {token.id for token in added.values() if token.special}
            self.vocab_size = max([self._sp.vocab_size(), *(token.id + 1 for token in added.values())])
        else:
            raise FileNotFoundError(
                f"no tokenizer in {checkpoint_dir}: expected tokenizer.json or tokenizer.model (copy them from the"
                " Hugging Face repo, or rerun `litgpt-clone download <repo>`)"
            )

        self.bos_id = self._special_id("bos", config)
        self.eos_id = self._special_id("eos", config)
        self.template_tokens = self._template_tokens(config)
        if self.backend == "huggingface":  # as transformers (_post_init): a named special token is special, whatever the
            # file says (an eos_token that tokenizer.json marks as a plain added token stayed in decoded text)
            from tokenizers import AddedToken

            plain = {t.content for t in self._hf.get_added_tokens_decoder().values() if not t.special}
            named = [t for t in self.template_tokens.values() if t in plain]
            if named:
                self._hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in named])
        if self.backend == "huggingface":
            added = self._hf.encode("").ids  # what the post-processor puts around a text, e.g. [bos]
            self.add_bos = self.bos_id is not None and added[:1] == [self.bos_id]
        else:
            self.add_bos = self.bos_id is not None and bool(config.get("add_bos_token", False))

        # as transformers' generate: generation_config.json's eos_token_id, or config.json's where there is no
        # generation_config.json (GenerationConfig.from_model_config)
        generation = checkpoint_dir / "generation_config.json"
        if not generation.is_file():
            generation = checkpoint_dir / "config.json"
        generation_eos = _token_ids(_read_json(generation).get("eos_token_id"), generation)
        self.stop_ids: set[int] = {i for i in [self.eos_id, *generation_eos] if i is not None}

        # as transformers: template files (chat_template.jinja, the default, and additional_chat_templates/<name>.jinja)
        # where there are any, else tokenizer_config.json's "chat_template", which some repos write as a list of named ones
        files = {"default": checkpoint_dir / "chat_template.jinja"} if (checkpoint_dir / "chat_template.jinja").is_file() else {}
        files.update({p.name.removesuffix(".jinja"): p for p in sorted((checkpoint_dir / CHAT_TEMPLATE_DIR).glob("*.jinja"))})
        template = {name: path.read_text(encoding="utf-8") for name, path in files.items()} or config.get("chat_template")
        if isinstance(template, list):
            template = {t["name"]: t["template"] for t in template if isinstance(t, dict) and "name" in t and "template" in t}
        self.chat_templates: dict[str, str] = {}  # the named ones ("default", "tool_use", "rag", ...), if more than one
        if isinstance(template, dict) and set(template) == {"default"}:
            template = template["default"]
        if isinstance(template, dict):
            self.chat_templates = template
            template = self.chat_templates.get("default")
            if template is None and self.chat_templates:  # as transformers, which raises on every use of such a tokenizer
                message = f"this checkpoint has chat templates named {', '.join(self.chat_templates)} and none named default: add one to tokenizer_config.json"
                template = "{{ raise_exception(" + json.dumps(message) + ") }}"
        self.chat_template: Optional[str] = template

    def _special_id(self, kind: str, config: dict) -> Optional[int]:
        """The id of the ``kind`` ("bos" or "eos") token: tokenizer_config.json's ``<kind>_token``, else config.json's
        ``<kind>_token_id`` (the first one if a list), else special_tokens_map.json's ``<kind>_token``, else the
        SentencePiece model's own. An explicit null in tokenizer_config.json means none, as transformers reads it (Qwen
        writes ``"bos_token": null`` and a ``bos_token_id`` in config.json)."""
        if f"{kind}_token" in config and config[f"{kind}_token"] is None:
            return None
        token = _token_content(config.get(f"{kind}_token"))
        if token is not None and (token_id := self.token_to_id(token)) is not None:
            return token_id
        config_json = self.checkpoint_dir / "config.json"
        token_ids = _token_ids(_read_json(config_json).get(f"{kind}_token_id"), config_json)
        if token_ids:
            return token_ids[0]
        token = _token_content(_read_json(self.checkpoint_dir / "special_tokens_map.json").get(f"{kind}_token"))
        if token is not None and (token_id := self.token_to_id(token)) is not None:
            return token_id
        if self.backend == "sentencepiece":
            token_id = self._sp.bos_id() if kind == "bos" else self._sp.eos_id()
            return token_id if token_id >= 0 else None
        return None

    def _template_tokens(self, config: dict) -> dict[str, str]:
        """The special tokens a chat template sees as variables (``bos_token``, ``eos_token``, ``unk_token``,
        ``pad_token``, ``sep_token``, ``cls_token``, ``mask_token``), as transformers passes its
        ``special_tokens_map``: the strings tokenizer_config.json names (an explicit null: none), else
        special_tokens_map.json's, else for a SentencePiece model its own BOS/EOS/UNK pieces. Not config.json's ids
        (a ``{{ bos_token }}`` of a tokenizer that names no BOS renders nothing under transformers)."""
        mapped = _read_json(self.checkpoint_dir / "special_tokens_map.json")
        own = {"bos": self._sp.bos_id(), "eos": self._sp.eos_id(), "unk": self._sp.unk_id()} if self.backend == "sentencepiece" else {}
        tokens = {}
        for kind in ("bos", "eos", "unk", "sep", "pad", "cls", "mask"):
            key = f"{kind}_token"
            token = _token_content(config[key]) if key in config else _token_content(mapped.get(key))
            if key not in config and token is None and own.get(kind, -1) >= 0:
                token = self._sp.id_to_piece(own[kind])
            if isinstance(token, str):
                tokens[key] = token
        return tokens

    def _sp_added_tokens(self, config: dict) -> dict[str, _AddedToken]:
        """The added tokens of a tokenizer.model checkpoint, by their strings: which strings they are is in the module's
        docstring. Later sources win (an ``added_tokens_decoder`` entry sets its token's flags)."""
        sp = self._sp
        declared = config.get("added_tokens_decoder")
        if not isinstance(declared, dict):  # the older file: {"<content>": id}
            declared = {i: c for c, i in _read_json(self.checkpoint_dir / "added_tokens.json").items()}
        ids = {_token_content(token): int(i) for i, token in declared.items()}
        tokens: dict[str, _AddedToken] = {}

        def add(token, special: bool) -> None:
            content = _token_content(token)
            if not isinstance(content, str) or not content:
                return
            token_id = ids.get(content, sp.piece_to_id(content))
            if token_id != ids.get(content) and sp.id_to_piece(token_id) != content:  # not in the model
                return
            flags = token if isinstance(token, dict) else {}
            tokens[content] = _AddedToken(token_id, special, bool(flags.get("lstrip")), bool(flags.get("rstrip")))

        own = (("unk", sp.unk_id()), ("bos", sp.bos_id()), ("eos", sp.eos_id()))
        named = {f"{kind}_token": sp.id_to_piece(i) for kind, i in own if i >= 0}
        for source in (_read_json(self.checkpoint_dir / "special_tokens_map.json"), config):
            named.update({key: value for key, value in source.items() if key.endswith("_token")})
        extra = config.get("additional_special_tokens") or config.get("extra_special_tokens")
        if isinstance(extra, dict):  # named ones ({"image_token": "<image>"})
            named.update(extra)
            extra = None
        for token in extra or [sp.id_to_piece(i) for i in range(sp.vocab_size()) if sp.is_control(i)]:
            add(token, special=True)
        for token in named.values():
            add(token, special=True)
        for token in declared.values():
            if isinstance(token, dict):
                add(token, special=bool(token.get("special")))
            else:  # added_tokens.json: special if named above
                add(token, special=token in tokens and tokens[token].special)
        return tokens

    def vocabulary_digest(self) -> str:
        """SHA-256 of the vocabulary (each id's token, in id order): tokenizers with the same digest give every id the
        same meaning, so token shards written with one train a model that decodes with the other."""
        h = hashlib.sha256()
        for i in range(self.vocab_size):
            piece = self._hf.id_to_token(i) if self.backend == "huggingface" else self._sp_piece(i)
            h.update((piece or "").encode("utf-8", "surrogatepass") + b"\0")
        return h.hexdigest()

    @functools.cached_property
    def _byte_level(self) -> bool:
        """tokenizer.json's decoder is ByteLevel (GPT-2, Llama 3, Qwen, ...): each token's characters stand for bytes."""
        return self.backend == "huggingface" and b'"ByteLevel"' in (self._hf.decoder.__getstate__() if self._hf.decoder else b"")

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes token ``token_id`` stands for, also where they are part of a character (OpenAI's logprobs
        ``bytes``): byte-level tokens through GPT-2's byte-to-character table, byte-fallback tokens (``<0xE2>``) as
        their byte, SentencePiece's "▁" as a space, any other token as its text."""
        piece = self._hf.id_to_token(token_id) if self.backend == "huggingface" else self._sp_piece(token_id)
        if piece is None:
            return b""
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            return bytes([int(piece[3:5], 16)])
        if self._byte_level and all(c in _UNICODE_TO_BYTE for c in piece):
            return bytes(_UNICODE_TO_BYTE[c] for c in piece)
        if self.backend == "sentencepiece" or "\u2581" in piece:
            return piece.replace("\u2581", " ").encode()
        return self.decode([token_id], skip_special_tokens=False).encode()

    def token_to_id(self, token: str) -> Optional[int]:
        """The id of ``token`` (a vocabulary entry, e.g. ``"<s>"``), or None if it is not in the vocabulary."""
        if self.backend == "huggingface":
            return self._hf.token_to_id(token)
        if token in self._sp_added:
            return self._sp_added[token].id
        token_id = self._sp.piece_to_id(token)  # gives the unknown token's id for anything not in the vocabulary
        return None if self._sp.is_unknown(token_id) and self._sp.id_to_piece(token_id) != token else token_id

    def fingerprint(self) -> str:
        """A hash of everything ``encode`` depends on: the tokenizer's files, config.json (its ``model_type`` and token
        ids) and ``ENCODING_VERSION``; the key of tokenized data caches."""
        h = hashlib.sha256(f"{ENCODING_VERSION}".encode())
        for name in (*TOKENIZER_FILES, "config.json"):
            path = self.checkpoint_dir / name
            h.update(b"|" + (path.read_bytes() if path.is_file() else b""))
        return h.hexdigest()

    @functools.cached_property
    def special_texts(self) -> list[str]:
        """The texts of the special tokens (those ``decode`` leaves out), for stop strings that hold one."""
        if self.backend == "huggingface":
            return [t.content for t in self._hf.get_added_tokens_decoder().values() if t.special]
        return [self._sp_piece(i) for i in sorted(self._sp_special)] + [self._sp.id_to_piece(i) for i in range(self._sp.vocab_size()) if self._sp.is_control(i)]

    def special_token_id(self, text: str) -> Optional[int]:
        """The id of the special token whose whole text is ``text`` (``"<|im_start|>"``), or None: one that ``decode``
        leaves out and writes as ``text`` with ``skip_special_tokens=False``. Its text never shows in decoded text, so
        a stop string equal to it is found by its id (``generate.TextStream``)."""
        token_id = self.token_to_id(text)
        if token_id is None or self.decode([token_id]) or self.decode([token_id], skip_special_tokens=False) != text:
            return None
        return token_id

    def encode(self, text: str, bos: Optional[bool] = None, eos: bool = False, max_length: int = -1) -> torch.Tensor:
        """``text`` as a 1-D int64 tensor of ids.

        bos: add BOS in front; None does what the checkpoint does (``add_bos``). A text that already starts with
            the BOS string gets a second one, as in transformers: pass ``bos=False`` for rendered chat templates.
        eos: add EOS at the end.
        max_length: keep only the first ``max_length`` ids (BOS/EOS included); -1 keeps all.
        """
        ids = self._hf.encode(text, add_special_tokens=False).ids if self.backend == "huggingface" else self._sp_ids(text)
        if self._bos(bos):
            ids = [self.bos_id, *ids]
        if eos:
            if self.eos_id is None:
                raise ValueError(f"the tokenizer in {self.checkpoint_dir} has no EOS token; call encode with eos=False")
            ids = [*ids, self.eos_id]
        if max_length > 0:
            ids = ids[:max_length]
        return torch.tensor(ids, dtype=torch.long)

    def encode_batch(self, texts: Sequence[str], bos: Optional[bool] = None) -> list[list[int]]:
        """The ids of each text, as ``encode(text, bos=bos)`` gives them, as lists. A Hugging Face tokenizer encodes the
        texts in one call, on several threads (unless ``TOKENIZERS_PARALLELISM=false``)."""
        if self.backend == "huggingface":
            rows = [e.ids for e in self._hf.encode_batch(list(texts), add_special_tokens=False)]
        else:
            rows = [self._sp_ids(text) for text in texts]
        return [[self.bos_id, *ids] for ids in rows] if self._bos(bos) else rows

    def _sp_ids(self, text: str) -> list[int]:
        """``text`` through sentencepiece, its added tokens (``<s>``, ``[INST]``, ...) split out first as their ids."""
        ids, start = [], 0
        while self._sp_split and (match := self._sp_split.search(text, start)):
            token, part = self._sp_added[match.group()], text[start : match.start()]
            ids += self._sp_part(part.rstrip(_WHITESPACE) if token.lstrip else part, first=start == 0)
            ids.append(token.id)
            start = _WHITESPACE_RUN.match(text, match.end()).end() if token.rstrip else match.end()
        return ids + self._sp_part(text[start:], first=start == 0)

    def _sp_part(self, text: str, first: bool) -> list[int]:
        """A part of the text between added tokens (``first``: the one at its start), with the "▁" in front that
        transformers' Metaspace pre-tokenizer gives it, where the model has a dummy prefix."""
        if self._dummy_prefix and not self._sp_native:
            if text.startswith(" "):
                # Metaspace puts "▁" in front only if the part does not start with one: " Hi" is "▁Hi", where
                # sentencepiece makes "▁▁Hi"; " " is "▁", where sentencepiece of "" is []
                return self._sp.encode(text[1:]) if text != " " else [self._sp.piece_to_id("▁")]
            if not (first or self._sp_prefix_all) or text.startswith("\u2581"):  # "<s>Hi": "Hi" gets no "▁"; nor a
                return self._sp_no_prefix.encode(text)  # part that starts with one already (Metaspace's rule)
        return self._sp.encode(text)

    @functools.cached_property
    def _sp_no_prefix(self):
        """The SentencePiece model without its dummy prefix: the serialized model with ``normalizer_spec {
        add_dummy_prefix: false }`` after it (field 3 in field 3; protobuf merges a message field written twice)."""
        import sentencepiece

        return sentencepiece.SentencePieceProcessor(model_proto=self._sp.serialized_model_proto() + b"\x1a\x02\x18\x00")

    def _sp_piece(self, token_id: int) -> str:
        """The text of a SentencePiece id: an added token's string, else the model's piece ("" for an id past the
        model that no added token has)."""
        if token_id in self._sp_added_pieces or token_id >= self._sp.vocab_size():
            return self._sp_added_pieces.get(token_id, "")
        return self._sp.id_to_piece(token_id)

    def _sp_ordinary(self, token_id: int) -> bool:
        """Whether ``token_id`` is one of the model's own pieces that sentencepiece decodes as text (not an added token,
        nor a control or unknown piece, which sentencepiece decodes as "" or " ⁇ ")."""
        sp, i = self._sp, token_id
        return i not in self._sp_added_pieces and i < sp.vocab_size() and not (sp.is_control(i) or sp.is_unknown(i))

    def _bos(self, bos: Optional[bool]) -> bool:
        """Whether to put BOS in front (None: as the checkpoint does)."""
        if not (self.add_bos if bos is None else bos):
            return False
        if self.bos_id is None:
            raise ValueError(f"the tokenizer in {self.checkpoint_dir} has no BOS token; call encode with bos=False")
        return True

    def decode(self, ids: Union[torch.Tensor, list[int]], skip_special_tokens: bool = True) -> str:
        """The text of ``ids``; special tokens (BOS, EOS, ...) are left out unless ``skip_special_tokens=False``,
        which writes them as their strings, as transformers does."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        ids = [ids] if isinstance(ids, int) else list(ids)  # one id (or a 0-d tensor's)
        if self.backend == "huggingface":
            return self._hf.decode(ids, skip_special_tokens=skip_special_tokens)

        # the added tokens (and any other control or unknown piece) as their text, each run of ordinary ids between
        # them through sentencepiece; special ones left out first where asked, as transformers does
        text, run = "", []
        for i in [*(i for i in ids if not (skip_special_tokens and i in self._sp_special)), None]:
            if i is not None and self._sp_ordinary(i):
                run.append(i)
                continue
            if run:
                piece = self._sp.decode(run)
                if text and self._dummy_prefix and self._sp.id_to_piece(run[0]).startswith("▁"):
                    piece = " " + piece  # sentencepiece drops a leading "▁" in every call; only the text's own goes
                text, run = text + piece, []
            if i is not None:
                text += self._sp_piece(i)
        return text
