"""PII redaction for code, after The Stack v2 / StarCoder: emails, secrets, passwords and public IP addresses.

Interface::

    redact(text: str) -> tuple[str, collections.Counter]
        The text with every finding replaced, and how many were replaced per kind:
        "EMAIL" -> "<EMAIL>", "KEY" -> "<KEY>", "PASSWORD" -> "<PASSWORD>",
        "IP_ADDRESS" -> one of a few fixed private addresses of the same family, chosen by a hash of the original.

Secrets: a fast regex prefilter proposes candidates in the shapes gitleaks and detect-secrets document (AWS access
key ids and secret keys, GitHub ``ghp_``/``gho_``/``ghu_``/``ghs_``/``ghr_``/``github_pat_`` tokens, Slack ``xox?-``
tokens, Stripe ``sk_live_``/``rk_live_`` keys, Google ``AIza`` API keys, JWTs, PEM private key blocks, basic-auth
credentials in URLs (``BASIC_AUTH``: RFC 3986 sub-delims such as ``!`` in the password, an empty user as in
``redis://:password@host``; ``$``-variables are not passwords), and ``password = "..."``-style assignments to secret-sounding names). Unquoted values are
candidates too where config files and shell scripts write them, alone at the end of their line:
``DB_PASSWORD=value`` (no spaces: shell, ``.env``), ``password: value`` and ``password = value`` (YAML, INI) when the
value has a digit or a symbol (a bare word there is mostly code: a type, a variable); values that look like code
(``get_password()``, ``settings.SECRET_KEY``, ``hashed_password``, ``str``, ``None``) never are. A candidate is
replaced only when detect-secrets, run on its line (``scan_line`` inside ``transient_settings``, with its default
false-positive filters; an unquoted value is quoted first, as its keyword detector expects of code), reports a
secret overlapping it: a named detector, the keyword detector, or a high-entropy string above that plugin's own
limit. Values assigned to password-like names and basic-auth passwords become ``<PASSWORD>``; everything else
``<KEY>``. A PEM block keeps its BEGIN/END lines and its body becomes ``<KEY>``.

Emails: ``local@domain.tld`` where the top-level domain is a common generic one (``COMMON_TLDS``: com, org, net,
dev, ...) or a two-letter country code not followed by ``(`` or ``[``, so that Python's matrix product
``x@weights.data`` / ``x@w.to(device)`` stays code. Not emails: RFC 2606 documentation addresses (``@example.com``,
``.org``, ``.net`` and their subdomains), ssh targets and git remotes (``git@github.com:owner/repo.git``,
``ssh://git@host/...``, ``ubuntu@ec2-....amazonaws.com``).

IP addresses: IPv4/IPv6 candidates are validated with ``ipaddress`` and replaced only when public (global, not
multicast or reserved) and not one of BigCode's ``POPULAR_DNS_SERVERS`` (8.8.8.8, 1.1.1.1, 9.9.9.9, ...: public
resolvers are configuration, and BigCode's redaction keeps them). Skipped as not network addresses: anything
preceded by a version marker ("ver", "v", "rev", or a name holding "version", "build", "release", "revision",
"firmware": ``build_number = "24.1.108.12"``, ``VERSION_STRING = '3.10.2.1'``,
``AssemblyFileVersion("1.0.12.3")``, a JSON key ``"version": "4.12.1.7"``), dotted runs of more than four numbers
(OIDs, section numbers), an address followed by ``.name`` (a file name: ``pkg-4.2.1.10.tar.gz``),
``x.x.x.x`` with single digits unless "dns" or "server" is near (StarCoder's rule: these are mostly versions),
IPv6 candidates without a digit or with fewer than three groups (C++ ``a::b``, times like ``12:30:45``).

Deterministic: same text, same output. detect-secrets keeps its settings in a process-global; do not call
``redact`` from several threads of one process (use processes).
"""

from __future__ import annotations

import bisect
import collections
import hashlib
import ipaddress
import re
from typing import NamedTuple, Optional

from detect_secrets.core.scan import scan_line
from detect_secrets.plugins.high_entropy_strings import Base64HighEntropyString, HexHighEntropyString
from detect_secrets.settings import transient_settings

PLACEHOLDERS = {"EMAIL": "<EMAIL>", "KEY": "<KEY>", "PASSWORD": "<PASSWORD>"}
# Replacement addresses: private (RFC 1918 / unique-local), so redacting twice changes nothing.
PRIVATE_IPV4 = ("10.0.12.34", "10.21.0.7", "172.16.31.10", "172.20.4.99", "192.168.127.12")
PRIVATE_IPV6 = ("fd00:c2b6:b24b:be67:2827:688d:e6a1:6a3b", "fd00:a516:7c1b:17cd:6d81:2137:bd2a:2c5b",
                "fd3e:4f5a:5b::1", "fd12:3456:789a:1::42", "fdf8:f53e:61e4::18")

# detect-secrets plugins that confirm our candidates (its IP detector is replaced by the IP rules here).
DETECT_SECRETS_PLUGINS = [
    {"name": "AWSKeyDetector"}, {"name": "GitHubTokenDetector"}, {"name": "SlackDetector"},
    {"name": "StripeDetector"}, {"name": "JwtTokenDetector"}, {"name": "PrivateKeyDetector"},
    {"name": "BasicAuthDetector"}, {"name": "KeywordDetector"},
    {"name": "Base64HighEntropyString", "limit": 4.5}, {"name": "HexHighEntropyString", "limit": 3.0},
]
_ENTROPY = {"Base64 High Entropy String": Base64HighEntropyString(limit=4.5),
            "Hex High Entropy String": HexHighEntropyString(limit=3.0)}

_PASSWORD_WORD = re.compile(r"pass|pwd|contrase", re.IGNORECASE)

# (pattern, group holding the secret, kind); kind None = decided from the keyword (password-like or not).
# Patterns lead with a literal (fast in ``re``); a match preceded by a word character is dropped afterwards.
SECRET_RULES: list[tuple[re.Pattern, int, Optional[str]]] = [
    (re.compile(r"A(?:KIA|SIA|BIA|CCA|3T[A-Z0-9])[A-Z2-7]{16}(?!\w)"), 0, "KEY"),
    (re.compile(r"(?i)aws.{0,20}?(?:key|pwd|pw|password|pass|token).{0,20}?(?:['\"]|[=:]\s*)([0-9a-zA-Z/+]{40})(?![0-9a-zA-Z/+])"), 1, "KEY"),
    (re.compile(r"gh[pousr]_[A-Za-z0-9]{36}(?!\w)"), 0, "KEY"),
    (re.compile(r"github_pat_[A-Za-z0-9_]{82}(?!\w)"), 0, "KEY"),
    (re.compile(r"xox(?:[abposr]|a-2)-[0-9A-Za-z-]{10,250}"), 0, "KEY"),
    (re.compile(r"[rs]k_live_[0-9a-zA-Z]{24,99}(?!\w)"), 0, "KEY"),
    (re.compile(r"AIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])"), 0, "KEY"),
    (re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]*"), 0, "KEY"),
]
# Credentials in a URL's userinfo (RFC 3986: user and password may hold the sub-delims ``!$&'()*+,;=``; the user may
# be empty, as in ``redis://:password@host``). Confirmed by detect-secrets' BasicAuthDetector on a copy of the line
# where the sub-delims are letters and an empty user is "user" (the detector refuses both, its default filters stay).
BASIC_AUTH = re.compile(r"://([^:/?#\s@'\"]{0,100}):([^:/?#\s@'\"]{1,100})@")
SUB_DELIMS = re.compile(r"[!$&'()*+,;=]")
# Assignments to secret-sounding names, matched on the lowercased text (``re.IGNORECASE`` is 7x slower here).
KEYWORD_RULE = re.compile(
    r"(?:key|secret|token|pass|pwd|contrase(?:ñ|n)a)\w*['\"\]]{0,2}\s*(?::=|=>|===?|!==?|=|:)\s*@?([`'\"])"
    r"([^\n'\"`]{4,200})\1"
)
# Unquoted values alone at the end of their line (shell, .env, YAML, INI): ``KEY=value`` or ``key: value`` / ``key = value``.
KEYWORD_UNQUOTED_RULE = re.compile(
    r"(?:key|secret|token|pass|pwd|contrase(?:ñ|n)a)\w*(=|:[ \t]+|[ \t]+=[ \t]+)"
    r"([^\s'\"`,;()\[\]{}<>$%&|\\*]{6,200})(?=[ \t\r]*(?:#[^\n]*)?$)", re.MULTILINE
)
CODE_VALUE = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")  # an identifier or attribute chain
CODE_WORDS = {"string", "boolean", "number", "integer", "object", "undefined", "nullable", "required", "optional",
              "secret", "password", "passwd", "token"}  # types, constants and field names, not secrets
PEM_BLOCK = re.compile(
    r"(-----BEGIN[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----)\s*?\n([\s\S]{16,}?)(?=\n?\s*-----END[ A-Z0-9_-]{0,100}PRIVATE KEY)"
)

EMAIL = re.compile(
    r"(?<![\w.+%-])([A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"(?!(?:png|jpe?g|gif|svg|webp|ico|css|js|ts|py|rb|go|rs|java|c|h|cpp|txt|md|json|ya?ml|toml|lock)\b)[A-Za-z]{2,24})"
    r"(?![\w-]|\.[A-Za-z0-9])"
)
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
IPV4 = re.compile(rf"(?<![\w.])({_OCTET}(?:\.{_OCTET}){{3}})(?!\w|\.\w)")
IPV6 = re.compile(r"(?<![\w:.])((?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?)(?![\w:.])")
# Cheap gates: the full patterns above run only on texts where these find something.
COMMON_TLDS = frozenset(
    "com org net edu gov mil int info biz name pro mobi aero coop museum jobs travel asia app dev io ai tech xyz online"
    " site cloud email systems digital network software studio design agency media news blog page shop store club"
    " academy group team world global company center space website live life today".split()
)
PLACEHOLDER_DOMAINS = ("example.com", "example.org", "example.net")  # RFC 2606: reserved for documentation
HOST_DOMAINS = ("amazonaws.com",)  # machines' host names (``ubuntu@ec2-1-2-3-4.compute-1.amazonaws.com``), no mail
SCP_TARGET = re.compile(r":(?:[\w~.-]*/|[\w~.-]+\.git\b)")  # ``git@github.com:owner/repo.git``: scp-style ``user@host:path``
# (a path: a "/" or a .git name; ``jane@gmail.com:hunter2`` is a mailbox: its address is redacted, what follows is kept)
SSH_URL_BEFORE = re.compile(r"(?i)(?:ssh|sftp)://$")  # ``ssh://git@host/...``: a login, not a mailbox (smtp:// users are)
EMAIL_HINT = re.compile(r"@[A-Za-z0-9-]+\.[A-Za-z]")
IPV4_HINT = re.compile(r"[0-9]\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]")
IPV6_HINT = re.compile(r"[0-9A-Fa-f]:[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]")
VERSION_BEFORE = re.compile(
    r"(?i)(?:\w*(?:version|release|revision|firmware|build)(?:s|d|_?(?:number|num|no|id|tag|str|string|name|info|code|ver\w*))?|(?:^|[^a-z0-9])(?:v|ver|rev))_*"
    r"['\"]?\s*[:=(]?\s*['\"]?$"
    r"|[=<>~!]=\s*['\"]?$"
)
# Public DNS resolvers, kept as configuration rather than personal data: BigCode's ``POPULAR_DNS_SERVERS``
# (bigcode-dataset pii/utils/emails_ip_addresses_detection.py): Google, Cloudflare, Control D, Quad9, OpenDNS,
# Comodo, AdGuard.
POPULAR_DNS_SERVERS = frozenset((
    "8.8.8.8", "8.8.4.4", "1.1.1.1", "1.0.0.1", "76.76.19.19", "76.223.122.150", "9.9.9.9", "149.112.112.112",
    "208.67.222.222", "208.67.220.220", "8.26.56.26", "8.20.247.20", "94.140.14.14", "94.140.15.15",
))


class _Span(NamedTuple):
    start: int
    end: int
    kind: str
    replacement: str


def _stable_choice(value: str, options: tuple[str, ...]) -> str:
    digest = hashlib.sha256(value.encode("utf-8")).digest()
    return options[int.from_bytes(digest[:8], "big") % len(options)]


def _ip_spans(text: str) -> list[_Span]:
    spans = []
    for hint, pattern, pool in ((IPV4_HINT, IPV4, PRIVATE_IPV4), (IPV6_HINT, IPV6, PRIVATE_IPV6)):
        if not hint.search(text):
            continue
        for match in pattern.finditer(text):
            value = match.group(1)
            try:
                address = ipaddress.ip_address(value)
            except ValueError:
                continue
            if not address.is_global or address.is_multicast or address.is_reserved or value in POPULAR_DNS_SERVERS:
                continue
            if VERSION_BEFORE.search(text, max(0, match.start() - 20), match.start()):
                continue
            if address.version == 6:
                if not any(ch.isdigit() for ch in value) or len([g for g in value.split(":") if g]) < 3:
                    continue
            elif len(value) == 7:  # x.x.x.x: a version unless the context talks about networks
                context = text[max(0, match.start() - 100) : match.end() + 100].lower()
                if "dns" not in context and "server" not in context:
                    continue
            spans.append(_Span(match.start(1), match.end(1), "IP_ADDRESS", _stable_choice(value, pool)))
    return spans


def _email_spans(text: str) -> list[_Span]:
    if not EMAIL_HINT.search(text):
        return []
    spans = []
    for m in EMAIL.finditer(text):
        domain = m.group(1).rsplit("@", 1)[1].lower()
        if any(domain == d or domain.endswith("." + d) for d in PLACEHOLDER_DOMAINS + HOST_DOMAINS):
            continue
        if SSH_URL_BEFORE.search(text, max(0, m.start() - 6), m.start()) or SCP_TARGET.match(text, m.end()):
            continue  # an ssh URL's user (``ssh://git@host/...``) or an scp-style ssh target: not a mailbox
        tld = domain.rsplit(".", 1)[1]
        if tld in COMMON_TLDS or (len(tld) == 2 and text[m.end() : m.end() + 1] not in ("(", "[")):
            spans.append(_Span(m.start(1), m.end(1), "EMAIL", PLACEHOLDERS["EMAIL"]))
    return spans


def _line_bounds(text: str, pos: int) -> tuple[int, int]:
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    return start, len(text) if end == -1 else end


def _confirmed(findings: list, line: str, start: int, end: int) -> bool:
    """Whether a detect-secrets finding on ``line`` overlaps ``line[start:end]``."""
    for finding in findings:
        value = finding.secret_value
        if not value:
            continue
        entropy = _ENTROPY.get(finding.type)
        if entropy is not None and entropy.calculate_shannon_entropy(value) <= entropy.entropy_limit:
            continue  # scan_line's eager search reports strings below the plugin's limit too
        at = line.find(value)
        while at != -1:
            if at < end and at + len(value) > start:
                return True
            at = line.find(value, at + 1)
    return False


def _code_like(value: str, operator: Optional[str]) -> bool:
    """Whether a value assigned to a secret-sounding name is code or a name rather than a secret: a type, constant
    or field name (``PASSWORD_FIELD = "password"``); unquoted (assigned with ``operator``), also an identifier with
    ``_`` or an attribute chain, or a bare word after ": " or " = " (a type or a variable)."""
    if value.lower() in CODE_WORDS:
        return True
    if operator is None:
        return False
    return bool(CODE_VALUE.fullmatch(value) and ("_" in value or "." in value)) or (operator != "=" and value.isalpha())


def _candidates(text: str) -> list[tuple[int, int, int, int, str, str]]:
    """(confirm_start, confirm_end, replace_start, replace_end, kind, form) for each secret candidate; form:
    "" (as written), "unquoted" (a value without quotes) or "url" (a URL's password)."""
    found = []
    for pattern, group, kind in SECRET_RULES:
        for match in pattern.finditer(text):
            if group == 0 and match.start() > 0 and (text[match.start() - 1].isalnum() or text[match.start() - 1] == "_"):
                continue
            found.append((match.start(group), match.end(group), match.start(group), match.end(group), kind, ""))
    lower = text.lower()
    keyword_source = lower if len(lower) == len(text) else None  # a few characters change length when lowered
    for rule, unquoted in ((KEYWORD_RULE, False), (KEYWORD_UNQUOTED_RULE, True)):
        pattern = rule if keyword_source is not None else re.compile(rule.pattern, rule.flags | re.IGNORECASE)
        for match in pattern.finditer(keyword_source if keyword_source is not None else text):
            if _code_like(text[match.start(2) : match.end(2)], match.group(1) if unquoted else None):
                continue
            kind = "PASSWORD" if _PASSWORD_WORD.search(match.group(0), 0, match.start(2) - match.start()) else "KEY"
            found.append((match.start(2), match.end(2), match.start(2), match.end(2), kind, "unquoted" if unquoted else ""))
    for match in BASIC_AUTH.finditer(text):
        if not match.group(2).startswith("$"):  # ``:$PASSWORD@``, ``:${DB_PASS}@``: a variable, not a password
            found.append((match.start(2), match.end(2), match.start(2), match.end(2), "PASSWORD", "url"))
    for match in PEM_BLOCK.finditer(text):
        found.append((match.start(1), match.end(1), match.start(2), match.end(2), "KEY", ""))
    return found


def _secret_spans(text: str) -> list[_Span]:
    candidates = _candidates(text)
    if not candidates:
        return []
    spans, scanned = [], {}
    with transient_settings({"plugins_used": DETECT_SECRETS_PLUGINS}):
        for c_start, c_end, r_start, r_end, kind, form in sorted(candidates):
            line_start, line_end = _line_bounds(text, c_start)
            line, start, end = text[line_start:line_end], c_start - line_start, c_end - line_start
            if form == "unquoted":  # detect-secrets' keyword detector reads code, where a literal value is quoted
                line, start, end = f'{line[:start]}"{line[start:end]}"{line[end:]}', start + 1, end + 1
            elif form == "url":  # the userinfo as BasicAuthDetector accepts it (see BASIC_AUTH)
                user_start = line.rfind("://", 0, start) + 3
                user = SUB_DELIMS.sub("x", line[user_start : start - 1]) or "user"
                shift = len(user) - (start - 1 - user_start)
                line = f"{line[:user_start]}{user}:{SUB_DELIMS.sub('x', line[start:end])}{line[end:]}"
                start, end = start + shift, end + shift
            if line not in scanned:
                scanned[line] = list(scan_line(line))
            if _confirmed(scanned[line], line, start, end):
                spans.append(_Span(r_start, r_end, kind, PLACEHOLDERS[kind]))
    return spans


def redact(text: str) -> tuple[str, collections.Counter]:
    """Replace emails, secrets, passwords and public IP addresses in ``text``; count replacements per kind.

    Returns ``(redacted_text, Counter({"EMAIL": n, "KEY": n, "PASSWORD": n, "IP_ADDRESS": n}))`` (kinds with no
    finding are absent). Where findings overlap, secrets win over emails and emails over IP addresses.
    """
    counts: collections.Counter = collections.Counter()
    spans = _secret_spans(text) + _email_spans(text) + _ip_spans(text)
    if not spans:
        return text, counts
    priority = {"KEY": 0, "PASSWORD": 0, "EMAIL": 1, "IP_ADDRESS": 2}
    taken: list[_Span] = []  # kept sorted by start; kept spans never overlap
    for span in sorted(spans, key=lambda s: (priority[s.kind], s.start, -s.end)):
        i = bisect.bisect_left(taken, span)
        if (i == 0 or taken[i - 1].end <= span.start) and (i == len(taken) or span.end <= taken[i].start):
            taken.insert(i, span)
    out, pos = [], 0
    for span in taken:
        out.append(text[pos : span.start])
        out.append(span.replacement)
        counts[span.kind] += 1
        pos = span.end
    out.append(text[pos:])
    return "".join(out), counts
