"""Human-readable numbers: bytes, durations, ratios, parity figures, one-line errors."""

from __future__ import annotations


def fmt_bytes(n: float | int | None) -> str:
    """Human-readable byte count (KiB / MiB / GiB); ``-`` for unknown."""
    if n is None:
        return "-"
    n = float(n)
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def fmt_seconds(s: float | None) -> str:
    """Human-readable duration; ``-`` for unknown."""
    if s is None:
        return "-"
    s = float(s)
    if s >= 3600:
        return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"
    if s >= 60:
        return f"{int(s // 60)}m{s % 60:04.1f}s"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.0f} us"


def fmt_ratio(x: float | None) -> str:
    """A ratio such as a speedup: ``3.40x``; ``-`` for unknown."""
    if x is None:
        return "-"
    return f"{x:.2f}x"


def fmt_num(x: float | None, digits: int = 4) -> str:
    """A parity figure: fixed for ordinary values, scientific for tiny ones; ``-`` for unknown."""
    if x is None:
        return "-"
    x = float(x)
    if x == 0:
        return "0"
    if abs(x) < 1e-3 or abs(x) >= 1e5:
        return f"{x:.2e}"
    return f"{x:.{digits}f}"


def short_error(message: str | None, width: int | None = 60) -> str:
    """The first line of an error message, cut at a word boundary to at most ``width`` characters
    (``...`` marks the cut; a single word longer than that is cut inside); None: the whole line."""
    if not message:
        return ""
    line = str(message).strip().splitlines()[0] if str(message).strip() else ""
    if width is None or len(line) <= width:
        return line
    head = line[: width - 3]
    cut = head.rfind(" ")
    if cut > width // 3:
        head = head[:cut]
    return head.rstrip(" ,;:") + "..."


def md_code(text: object) -> str:
    """``text`` as a markdown code span that nothing in it can break out of: control characters become
    spaces, ``|`` is escaped (tables), and the fence is longer than any run of backticks inside."""
    s = "".join(ch if ch.isprintable() else " " for ch in str(text)).replace("|", "\\|")
    longest = run = 0
    for ch in s:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * (longest + 1)
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def md_text(text: object) -> str:
    """``text`` as literal markdown text: control characters become spaces, markdown punctuation is
    backslash-escaped (ordinary backend names such as ``gqa-shared`` come out unchanged)."""
    s = "".join(ch if ch.isprintable() else " " for ch in str(text))
    return "".join("\\" + ch if ch in "\\`*_[]<>|#!~" else ch for ch in s)
