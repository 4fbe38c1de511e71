"""PII scrubbing: e-mail addresses, phone numbers, IP addresses, payment cards (Luhn-checked)
and configurable national-ID patterns, each replaced by a placeholder and counted by kind.

Order matters and is fixed: e-mail, credit_card, national IDs, ip, phone. Card numbers go
before phones and IDs before phones so a long digit group is counted as what it is.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from cpt_trainer.contract.config import PiiStage

EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"
)
# 13-19 digits, optionally grouped by single spaces or dashes, not part of a longer number.
CARD = re.compile(r"(?<![\d.,+])(?<!\d[ -])\d(?:[ -]?\d){12,18}(?![ -]?\d)")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IPV4 = re.compile(rf"(?<![\d.])(?:{_OCTET}\.){{3}}{_OCTET}(?!\d)(?!\.\d)")
IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
PHONE = re.compile(
    r"""(?<![\w+])(?<!\d[ .-])
    (?:
        \+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}   # +44 20 7946 0958, +1-555-123-4567
      | \(\d{2,4}\)[ .-]?\d{3,4}[ .-]?\d{3,4}                             # (555) 123-4567
      | \d{2,4}[.-]\d{3,4}[.-]\d{3,4}                                     # 555-123-4567, 555.123.4567
      | \d{2,4}\ \d{3,4}\ \d{3,4}                                         # 020 7946 0958
    )
    (?![ .-]?\d)(?!\w)""",
    re.VERBOSE,
)


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check of a payment-card number given as digits only."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _digits(s: str) -> str:
    return "".join(ch for ch in s if ch.isdigit())


def _is_card(match: str) -> bool:
    digits = _digits(match)
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_valid(digits)


def _is_ipv6(match: str) -> bool:
    groups = [g for g in match.split(":") if g]
    if len(groups) < 2:
        return False  # `x[::2]` and `a::b` in code are not addresses
    try:
        ipaddress.IPv6Address(match)
    except ValueError:
        return False
    return True


def _is_phone(match: str) -> bool:
    return 7 <= len(_digits(match)) <= 15


def compile_tenant_regex(pattern: str) -> Any:
    """A tenant's pattern, compiled with RE2 (linear time: no catastrophic backtracking on a
    crafted document), as admission checked it; Python's `re` only where RE2 is not installed."""
    try:
        import re2
    except ImportError:  # pragma: no cover  (google-re2 is a dependency of the package)
        return re.compile(pattern)
    options = re2.Options()
    options.log_errors = False
    return re2.compile(pattern, options)


class PiiScrubber:
    """Replaces PII in text; `scrub` returns the new text and the count per kind."""

    def __init__(self, stage: PiiStage):
        self.replacement = stage.replacement
        rules: list[tuple[str, re.Pattern, Callable[[str], bool] | None]] = []
        kinds = set(stage.kinds)
        if "email" in kinds:
            rules.append(("email", EMAIL, None))
        if "credit_card" in kinds:
            rules.append(("credit_card", CARD, _is_card))
        for nid in stage.national_ids:
            rules.append((nid.name, compile_tenant_regex(nid.regex), None))
        if "ip" in kinds:
            rules.append(("ip", IPV4, None))
            rules.append(("ip", IPV6, _is_ipv6))
        if "phone" in kinds:
            rules.append(("phone", PHONE, _is_phone))
        self.rules = rules
        self.kinds = sorted({k for k, _, _ in rules})

    def placeholder(self, kind: str) -> str:
        return self.replacement.replace("{kind}", kind)

    def scrub(self, text: str) -> tuple[str, Counter]:
        counts: Counter = Counter()
        for kind, pattern, valid in self.rules:
            repl = self.placeholder(kind)

            def _sub(m: re.Match, kind=kind, valid=valid, repl=repl) -> str:
                if valid is not None and not valid(m.group(0)):
                    return m.group(0)
                counts[kind] += 1
                return repl

            text = pattern.sub(_sub, text)
        return text, counts
