"""podcron's cron against robfig/cron v3 itself, which Kubernetes CronJob validates and runs with.

``tools/cronref`` is a small Go program on ``github.com/robfig/cron/v3``
(pinned in its go.mod), built once into the cache like the control plane. It
answers what CronJob would: Kubernetes' validation verdict (``ParseStandard``
accepts it and it holds no ``TZ``) and the next fire times in UTC. One helper
process answers the whole batch.

The only intended difference: podcron refuses ``@every`` (see
docs/schedules.md). robfig gives up five years after the start; where it does,
podcron's answer must lie beyond those five years.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import random
import re
import subprocess
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import gobuild
from gobuild import TOOLS, BinariesUnavailable
from podcron.errors import InvalidSchedule
from podcron.schedules import Cron

MODULE = TOOLS / "cronref"
MICROSECOND = timedelta(microseconds=1)
SEED = 20_260_611
RANDOM_VALID = 3_000
RANDOM_MUTATED = 3_000
FIRES = 6


@dataclass(frozen=True)
class Answer:
    """What Kubernetes CronJob says about one expression, from one start time."""

    accepted: bool
    every: bool
    error: str
    fires: list[datetime]


Reference = Callable[[list[tuple[str, datetime]]], list[Answer]]


def _robfig_version() -> str:
    match = re.search(r"^require github\.com/robfig/cron/v3 (v\S+)$", _read("go.mod"), re.M)
    assert match is not None, "tools/cronref/go.mod must require robfig/cron/v3"
    return match[1]


def _read(name: str) -> str:
    return (MODULE / name).read_text()


def _built() -> Path:
    version = _robfig_version()
    # The helper's own source is part of the cache key: editing it rebuilds.
    digest = hashlib.sha256(
        "".join(_read(name) for name in ("go.mod", "go.sum", "main.go")).encode()
    ).hexdigest()[:12]
    try:
        directory = gobuild.ensure_built(
            f"cronref/robfig-cron-{version}-{digest}",
            f"cronref (robfig/cron {version})",
            [gobuild.GoBuild("cronref", ["."])],
            ["cronref"],
        )
    except BinariesUnavailable as error:
        if gobuild.find_go() is None:
            pytest.skip(reason=f"no cron reference: {error}")
        raise
    return directory / "cronref"


@pytest.fixture(scope="module")
def reference() -> Reference:
    binary = _built()

    def ask(questions: list[tuple[str, datetime]]) -> list[Answer]:
        lines = "".join(
            json.dumps({"expression": text, "start": int(start.timestamp()), "count": FIRES}) + "\n"
            for text, start in questions
        )
        result = subprocess.run(
            [binary], input=lines, capture_output=True, text=True, check=True, timeout=300
        )
        answers = [json.loads(line) for line in result.stdout.splitlines()]
        assert len(answers) == len(questions), result.stderr
        return [
            Answer(
                accepted=answer["accepted"],
                every=answer["every"],
                error=answer["error"],
                fires=[datetime.fromtimestamp(moment, UTC) for moment in answer["next"]],
            )
            for answer in answers
        ]

    return ask


def podcron(text: str) -> Cron | None:
    """The expression as podcron reads it in UTC, or None if refused."""
    try:
        return Cron(expression=text)
    except InvalidSchedule:
        return None


def check_fires(cron: Cron, text: str, start: datetime, fires: list[datetime]) -> None:
    """podcron's next and last ticks agree with robfig's fire times from ``start``."""
    moment = start
    for expected in fires:
        following = cron.next_after(moment)
        assert following == expected, f"{text!r} after {moment}: {following} != {expected}"
        assert cron.last_at_or_before(expected) == expected, text
        if moment != start:
            assert cron.last_at_or_before(expected - MICROSECOND) == moment, text
        moment = expected
    if len(fires) < FIRES:
        # robfig looks five years past the second after `moment`, then gives up.
        horizon = (moment + timedelta(seconds=1)).year + 5
        following = cron.next_after(moment)
        assert following is None or following.year > horizon, f"{text!r} after {moment}"


# -- expressions CronJob accepts, drawn at random ------------------------------------

# (low, high, names) of minute, hour, day of month, month, day of week.
FIELDS: tuple[tuple[int, int, tuple[str, ...]], ...] = (
    (0, 59, ()),
    (0, 23, ()),
    (1, 31, ()),
    (1, 12, ("jan", "feb", "mar", "apr", "may", "jun",
             "jul", "aug", "sep", "oct", "nov", "dec")),
    (0, 6, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")),
)  # fmt: skip
MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


def spelled(rng: random.Random, value: int, low: int, names: tuple[str, ...]) -> str:
    """``value`` as a number (maybe with leading zeros or "+") or a name in any case."""
    if names and rng.random() < 0.4:
        return "".join(rng.choice((c.lower(), c.upper())) for c in names[value - low])
    return rng.choice(("", "", "", "0", "00", "+")) + str(value)


def random_item(rng: random.Random, low: int, high: int, names: tuple[str, ...]) -> str:
    first, second = sorted(rng.randint(low, high) for _ in range(2))
    step = "/" + rng.choice(("", "0", "+")) + str(rng.randint(1, high - low + 5))
    choices = {
        "star": rng.choice(("*", "?")),
        "value": spelled(rng, first, low, names),
        "range": f"{spelled(rng, first, low, names)}-{spelled(rng, second, low, names)}",
        "equal-ends": f"{spelled(rng, first, low, names)}-{spelled(rng, first, low, names)}",
        "star-step": rng.choice(("*", "?")) + step,
        "value-step": spelled(rng, first, low, names) + step,
        "range-step": f"{spelled(rng, first, low, names)}-{spelled(rng, second, low, names)}"
        + step,
    }
    kind = rng.choices(list(choices), weights=(3, 3, 2, 1, 2, 1, 2))[0]
    return choices[kind]


def random_field(rng: random.Random, low: int, high: int, names: tuple[str, ...]) -> str:
    items = [random_item(rng, low, high, names) for _ in range(rng.choice((1, 1, 1, 2, 3)))]
    if rng.random() < 0.05:  # empty list items are skipped
        items.insert(rng.randint(0, len(items)), "")
    return ",".join(items)


def random_expression(rng: random.Random) -> str:
    if rng.random() < 0.03:
        return rng.choice(MACROS)
    fields = [random_field(rng, low, high, names) for low, high, names in FIELDS]
    gaps = [rng.choice((" ", " ", " ", "  ", "\t")) for _ in range(4)]
    text = fields[0] + "".join(gap + field for gap, field in zip(gaps, fields[1:], strict=True))
    return rng.choice(("", "", "", " ")) + text + rng.choice(("", "", "", "\n"))


def random_start(rng: random.Random) -> datetime:
    """Mostly now-ish years, some far ones, many at the turn of a month or year."""
    year = rng.choice((rng.randint(1970, 2100), rng.randint(1970, 2100), rng.randint(2100, 9990)))
    if rng.random() < 0.3:
        month, day = rng.choice(((12, 31), (2, 28), (2, 29), (1, 31), (4, 30)))
        day = min(day, 28) if month == 2 and not calendar.isleap(year) else day
        return datetime(year, month, day, 23, 59, rng.randint(0, 59), tzinfo=UTC)
    start = datetime(year, 1, 1, tzinfo=UTC)
    return start + timedelta(seconds=rng.randrange(365 * 86_400))


def mutated(rng: random.Random, text: str) -> str:
    """``text`` with a few characters inserted, deleted or replaced: mostly refused."""
    alphabet = "0123456789*?,-/ \tLW#@HRjanMONfriSUN+"
    characters = list(text)
    for _ in range(rng.randint(1, 2)):
        where = rng.randint(0, len(characters))
        action = rng.choice(("insert", "delete", "replace"))
        if action == "insert" or where == len(characters):
            characters.insert(where, rng.choice(alphabet))
        elif action == "delete":
            del characters[where]
        else:
            characters[where] = rng.choice(alphabet)
    return "".join(characters)


def test_random_expressions_fire_at_the_same_times_as_cronjob(reference: Reference) -> None:
    rng = random.Random(SEED)
    questions = [(random_expression(rng), random_start(rng)) for _ in range(RANDOM_VALID)]
    answers = reference(questions)
    for (text, start), answer in zip(questions, answers, strict=True):
        assert answer.accepted, f"the generator made {text!r}, which CronJob refuses"
        cron = podcron(text)
        assert cron is not None, f"podcron refuses {text!r}"
        check_fires(cron, text, start, answer.fires)


def test_mutated_expressions_get_cronjobs_verdict(reference: Reference) -> None:
    rng = random.Random(SEED + 1)
    questions = [
        (mutated(rng, random_expression(rng)), random_start(rng)) for _ in range(RANDOM_MUTATED)
    ]
    answers = reference(questions)
    accepted = 0
    for (text, start), answer in zip(questions, answers, strict=True):
        cron = podcron(text)
        assert (cron is not None) == (answer.accepted and not answer.every), (
            f"{text!r}: CronJob {'accepts' if answer.accepted else 'refuses'} it"
            f" ({answer.error or 'ok'}), podcron {'accepts' if cron else 'refuses'} it"
        )
        if cron is not None:
            accepted += 1
            check_fires(cron, text, start, answer.fires)
    # Both verdicts must be well represented for the comparison to mean something.
    assert RANDOM_MUTATED // 20 < accepted < RANDOM_MUTATED * 19 // 20


# -- edge cases ---------------------------------------------------------------------

EDGE_CASES = [
    # Empty, whitespace, field counts.
    "", " ", "\t", "* * * * *", "  * * * * *  ", "*\t*\n*\r*\f*", "*\v* * * *",
    "* * * *", "* * * * * *", "0 0 * * * * 2030", "*****",
    # One value spelled two ways is a one-value range, not the whole field.
    "0 0 * * mon-1", "0 0 1 jan-1 *", "0 0 * * 0-sun", "0 0 * * 7-0", "0 0 1 12-DEC *",
    "0 0 1 JAN-jan/2 *", "0 9 * * 1-1", "0 0 * * sun-sat", "0 0 * * SAT-sun", "0 0 * * 7",
    "0 0 * * 0,7", "0 0 * * 6-7",
    # The day rule: either field when neither is a star, both otherwise.
    "0 0 13 * 5", "0 0 13 * fri", "0 0 13 * */1", "0 0 13 * */2", "0 0 13 * ?", "0 0 13 * 0-6",
    "0 0 */1 * 5", "0 0 */2 * 5", "0 0 ? * 5", "0 0 1-31 * 5", "0 0 *,13 * 5", "0 0 13 * *,5",
    # Other dialects' extensions, hashed and random fields.
    "0 0 13 * 5#2", "0 0 L * *", "0 0 LW * *", "0 0 15W * *", "0 0 * * 5L", "0 0 * * FRI#1",
    "H * * * *", "H/5 * * * *", "R * * * *", "0 0 L-3 * *",
    # Macros: exact spelling only.
    *MACROS, "@DAILY", "@Daily", "@daily ", " @daily", "@ daily", "@", "@reboot", "@weekly\n",
    "@every 5m", "@every 1h30m", "@every", "@every ", "@every 5x", "@every 500ms", "@every -5m",
    # Zone prefixes: Kubernetes refuses any TZ.
    "TZ=UTC * * * * *", "CRON_TZ=Europe/Berlin 0 0 * * *", "TZ=UTC", "TZ=Nowhere/Else * * * * *",
    "0 0 * * * TZ", "tz=UTC * * * * *",
    # Steps.
    "*/0 * * * *", "*/60 * * * *", "*/100 * * * *", "5/15 * * * *", "0-30/7 * * * *",
    "*/-1 * * * *", "*/+2 * * * *", "1/ * * * *", "/5 * * * *", "*/5/5 * * * *", "*/ * * * *",
    "59/1 * * * *", "0 */24 * * *", "0 0 */31 * *", "0 0 * */12 *", "0 0 * * */7",
    "*/9223372036854775807 * * * *", "*/9223372036854775808 * * * *",
    # Ranges: hyphens, and robfig reading "*-anything" as "*".
    "1-2-3 * * * *", "*-5 * * * *", "?-5/2 * * * *", "5-* * * * *", "*-* * * * *",
    "5- * * * *", "-5 * * * *", "30-10 * * * *", "0-59 0-23 1-31 1-12 0-6",
    # Question marks anywhere.
    "? ? ? ? ?", "0 0 ? * mon", "0 0 1 * ?", "?? * * * *",
    # Numbers.
    "00 00 01 01 00", "+5 * * * *", "++5 * * * *", "-0 * * * *", "60 * * * *", "0 24 * * *",
    "0 0 0 * *", "0 0 32 * *", "0 0 * 0 *", "0 0 * 13 *", "99999999999999999999 * * * *",
    "0x5 * * * *", "1_0 * * * *", "1e1 * * * *", "5.0 * * * *",
    "\u0663 * * * *", "\uff15 * * * *", "\u00b2 * * * *",
    # Lists, with empty items.
    "1,,2 * * * *", ", * * * *", ",,, * * * *", "0 0 , * *", "0 0 * , *", "0 0 * * ,",
    ",0 0 * * *", "0, 0 * * *",
    # Names: three letters, any case, only in the month and day-of-week fields.
    "0 0 * JAN *", "0 0 * jan,MAR,mAy *", "0 0 * January *", "0 0 * * monday", "0 0 * * Mon",
    "0 0 * 1-jun/2 *", "0 0 * * tue-thu", "jan * * * *", "0 0 jan * *", "0 0 * * FR\u0130",
    "0 0 * \u0130 *", "0 0 * \u212aAN *",
    # Dates that never come: accepted, never fire.
    "0 0 30 2 *", "0 0 31 4,6,9,11 *", "0 0 29 2 *", "0 0 30 2 mon", "0 0 30 2 */1",
    "0 0 30 2 */2", "0 0 31 2 ?", "0 0 29 2 1",
]  # fmt: skip
EDGE_STARTS = (
    datetime(2024, 2, 28, 12, 34, 56, tzinfo=UTC),
    datetime(2096, 3, 1, tzinfo=UTC),
    datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC),
)


def unicode_spaces() -> list[str]:
    """Expressions whose fourth separator is a character some engine might call space."""
    candidates = [chr(code) for code in range(0x3001) if chr(code).isspace()]
    candidates += ["\u180e", "\u200b", "\u2060", "\ufeff", "\x1c", "\x00"]
    for code in range(0x3001):
        if unicodedata.category(chr(code)).startswith("Z"):
            candidates.append(chr(code))
    return [f"0 0 * *{space}1" for space in dict.fromkeys(candidates)]


def test_edge_cases_get_cronjobs_verdict(reference: Reference) -> None:
    texts = [*EDGE_CASES, *unicode_spaces()]
    questions = [(text, start) for text in texts for start in EDGE_STARTS]
    answers = reference(questions)
    for (text, start), answer in zip(questions, answers, strict=True):
        cron = podcron(text)
        assert (cron is not None) == (answer.accepted and not answer.every), (
            f"{text!r}: CronJob {'accepts' if answer.accepted else 'refuses'} it"
            f" ({answer.error or 'ok'}), podcron {'accepts' if cron else 'refuses'} it"
        )
        if cron is not None:
            check_fires(cron, text, start, answer.fires)


def test_the_one_intended_difference_is_every(reference: Reference) -> None:
    (answer,) = reference([("@every 5m", datetime(2024, 1, 1, tzinfo=UTC))])
    assert answer.accepted
    assert answer.every
    assert podcron("@every 5m") is None
