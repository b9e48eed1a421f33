"""A labelled set of image captions for the privacy stage: captions with planted personal data (the span and type
of every planted value known) and clean captions, a third of them hard negatives that look like personal data to a
pattern matcher (ISBNs, dates, version numbers, prices, order numbers, sizes).

Every planted value is valid in its format: cards pass Luhn, IBANs their mod-97 check, SSNs the SSA's area and
group rules (and none of the advertised fakes), phone numbers what libphonenumber calls valid. Values are written
as people write them, typographic separators included: phones with en-dashes, no-break or narrow no-break spaces,
the German slash (``030/2037872``), some captions with two phone numbers one after the other; SSNs with
en-dashes. The set is a pure function of its seed: ``labelled_captions(600, seed=0)``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

ENTITIES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "US_SSN")


@dataclass(frozen=True)
class Caption:
    text: str
    spans: tuple[tuple[str, int, int], ...] = field(default=())  # (entity type, start, end) of each planted value

    @property
    def clean(self) -> bool:
        return not self.spans


SUBJECTS = ("a red barn at dusk", "two dogs on a beach", "the old harbour in winter", "a bowl of ramen",
            "a cyclist crossing a bridge", "sunflowers in a field", "a grey cat asleep on a sofa",
            "the city skyline at night", "a wooden boat on a lake", "children flying a kite", "a bakery window",
            "a steam train in the mountains", "autumn leaves on a path", "a lighthouse in fog",
            "a violin on a chair", "fresh bread on a table", "a rocket on the launch pad", "a snowy forest road")
FIRST = ("anna", "jonas", "maria", "li", "omar", "sofia", "peter", "chen", "fatima", "lucas", "emma", "noah")
LAST = ("schmidt", "garcia", "nguyen", "okafor", "rossi", "kowalski", "smith", "haddad", "silva", "tanaka")
DOMAINS = ("example.com", "mail.example.org", "photos.example.net", "gmail.com", "web.de", "studio.co.uk")


def _email(rng: random.Random) -> str:
    sep = rng.choice((".", "_", ""))
    return f"{rng.choice(FIRST)}{sep}{rng.choice(LAST)}{rng.randint(1, 99) if rng.random() < 0.4 else ''}@{rng.choice(DOMAINS)}"


def _phone(rng: random.Random) -> str:
    import phonenumbers

    while True:
        kind = rng.random()
        if kind < 0.5:  # US, NANP: area codes and exchanges that libphonenumber knows are in use
            area = rng.choice((212, 213, 303, 312, 415, 503, 617, 702, 808, 917))
            number = f"{area}{rng.randint(200, 999)}{rng.randint(0, 9999):04d}"
            formats = (f"({number[:3]}) {number[3:6]}-{number[6:]}", f"{number[:3]}-{number[3:6]}-{number[6:]}",
                       f"+1 {number[:3]} {number[3:6]} {number[6:]}", f"{number[:3]}.{number[3:6]}.{number[6:]}",
                       f"{number[:3]}\u2013{number[3:6]}\u2013{number[6:]}",  # en-dashes
                       f"({number[:3]})\u00a0{number[3:6]}-{number[6:]}")  # a no-break space
            text, region = rng.choice(formats), "US"
        elif kind < 0.75:  # UK London / mobile
            style = rng.random()
            if style < 0.35:
                text, region = f"+44 20 {rng.randint(7000, 8999)} {rng.randint(0, 9999):04d}", "GB"
            elif style < 0.5:  # narrow no-break spaces, as typesetting software writes them
                text, region = f"+44\u202f20\u202f{rng.randint(7000, 8999)}\u202f{rng.randint(0, 9999):04d}", "GB"
            else:
                text, region = f"07{rng.randint(400, 999)} {rng.randint(100000, 999999)}", "GB"
        else:  # Germany: Berlin, Munich, a mobile; the area code with a slash, as Germans write it
            text, region = rng.choice((f"+49 30 {rng.randint(1000000, 9999999)}",
                                       f"+49 89 {rng.randint(100000, 999999)}{rng.randint(0, 9)}",
                                       f"+49 151 {rng.randint(10000000, 99999999)}",
                                       f"030/{rng.randint(1000000, 9999999)}",
                                       f"089/{rng.randint(100000, 999999)}{rng.randint(0, 9)}")), "DE"
        # validity as libphonenumber reads the number with plain spaces (it reads no narrow no-break space)
        if phonenumbers.is_valid_number(phonenumbers.parse(text.replace("\u202f", " "), region)):
            return text


def _luhn_digit(digits: str) -> str:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 == 0 else 1)
        total += n - 9 if n > 9 else n
    return str((10 - total % 10) % 10)


def _card(rng: random.Random) -> str:
    prefix, length = rng.choice((("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("37", 15), ("6011", 16)))
    body = prefix + "".join(str(rng.randint(0, 9)) for _ in range(length - len(prefix) - 1))
    number = body + _luhn_digit(body)
    style = rng.random()
    if length == 15:
        groups = (number[:4], number[4:10], number[10:])
    else:
        groups = tuple(number[i:i + 4] for i in range(0, 16, 4))
    return " ".join(groups) if style < 0.45 else "-".join(groups) if style < 0.75 else number


def _iban(rng: random.Random) -> str:
    country, bban = rng.choice((
        ("DE", lambda: "".join(str(rng.randint(0, 9)) for _ in range(18))),
        ("GB", lambda: rng.choice(("NWBK", "BARC", "MIDL")) + "".join(str(rng.randint(0, 9)) for _ in range(14))),
        ("FR", lambda: "".join(str(rng.randint(0, 9)) for _ in range(23))),
        ("NL", lambda: rng.choice(("ABNA", "INGB", "RABO")) + "".join(str(rng.randint(0, 9)) for _ in range(10))),
    ))
    bban = bban()
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    iban = f"{country}{98 - int(numeric) % 97:02d}{bban}"
    return " ".join(iban[i:i + 4] for i in range(0, len(iban), 4)) if rng.random() < 0.6 else iban


def _ip(rng: random.Random) -> str:
    if rng.random() < 0.6:
        first = rng.choice((23, 45, 62, 81, 93, 104, 151, 178, 185, 203, 212))
        return f"{first}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    groups = [f"{rng.randint(0, 0xffff):x}" for _ in range(8)]
    groups[0] = rng.choice(("2001", "2a02", "2604", "2a00"))
    if rng.random() < 0.5:
        return ":".join(groups)
    return ":".join(groups[:3]) + "::" + groups[-1]


def _ssn(rng: random.Random) -> str:
    while True:
        area = rng.randint(1, 899)
        if area == 666:
            continue
        group, serial = rng.randint(1, 99), rng.randint(1, 9999)
        text = f"{area:03d}-{group:02d}-{serial:04d}"
        if len(set(text.replace("-", ""))) > 2 and text not in ("078-05-1120", "219-09-9999", "123-45-6789"):
            return text.replace("-", "\u2013") if rng.random() < 0.2 else text  # en-dashes, as a word processor writes


MAKERS = {"EMAIL_ADDRESS": _email, "PHONE_NUMBER": _phone, "CREDIT_CARD": _card, "IBAN_CODE": _iban,
          "IP_ADDRESS": _ip, "US_SSN": _ssn}

# How a caption carries a value: with a context word nearby, or bare (recall must not depend on context for the
# formats that validate themselves)
CARRIERS = {
    "EMAIL_ADDRESS": ("{s}; prints from {v}", "{s}, contact {v}", "{s} (photo: {v})", "{v} sent us {s}"),
    "PHONE_NUMBER": ("{s}, call {v} to book", "{s} | {v}", "{s}; phone {v}", "{s}, ask for Tom on {v}"),
    "CREDIT_CARD": ("{s}, paid with card {v}", "{s} {v}", "{s}; visa {v} exp 09/27", "receipt {v} for {s}"),
    "IBAN_CODE": ("{s}, donations to IBAN {v}", "{s} - {v}", "{s}; bank transfer to {v}", "{v} {s}"),
    "IP_ADDRESS": ("{s}, uploaded from {v}", "{s} [{v}]", "{s} via ip {v}", "{s} served by {v}"),
    "US_SSN": ("{s}, ssn {v}", "{s} {v}", "{s}; social security number {v}", "form for {s}: {v}"),
}


def _isbn13(rng: random.Random) -> str:
    digits = "978" + "".join(str(rng.randint(0, 9)) for _ in range(9))
    check = (10 - sum(int(d) * (1 if i % 2 == 0 else 3) for i, d in enumerate(digits)) % 10) % 10
    d = digits + str(check)
    return f"{d[:3]}-{d[3]}-{d[4:7]}-{d[7:12]}-{d[12]}" if rng.random() < 0.6 else d


def _isbn10(rng: random.Random) -> str:
    digits = "".join(str(rng.randint(0, 9)) for _ in range(9))
    check = sum((10 - i) * int(d) for i, d in enumerate(digits)) % 11
    c = str((11 - check) % 11).replace("10", "X")
    return f"{digits[0]}-{digits[1:4]}-{digits[4:9]}-{c}"


MONTHS = ("January", "March", "May", "June", "August", "October", "December")


def _hard_negative(rng: random.Random, subject: str) -> str:
    y, m, d = rng.randint(1950, 2025), rng.randint(1, 12), rng.randint(1, 28)
    kind = rng.randrange(6)
    if kind == 0:
        return rng.choice((f"{subject}, from the book ISBN {_isbn13(rng)}", f"cover of ISBN {_isbn10(rng)}: {subject}",
                           f"{subject} (ISBN-13 {_isbn13(rng)})"))
    if kind == 1:
        return rng.choice((f"{subject}, taken on {y}-{m:02d}-{d:02d}", f"{subject} on {rng.choice(MONTHS)} {d}, {y}",
                           f"{subject}, {d:02d}/{m:02d}/{y} at {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}",
                           f"{subject} {d}.{m}.{y}", f"{subject}, summer {y}"))
    if kind == 2:
        return rng.choice((f"screenshot of firmware v{rng.randint(1, 12)}.{rng.randint(0, 30)}.{rng.randint(0, 99)}",
                           f"{subject}, edited in version {rng.randint(1, 30)}.{rng.randint(0, 9)}.{rng.randint(0, 255)}.{rng.randint(0, 9)}",
                           f"{subject} rendered with build {rng.randint(1, 9)}.{rng.randint(0, 9)}.{rng.randint(0, 9)}.{rng.randint(100, 9999)}",
                           f"release {rng.randint(1, 5)}.{rng.randint(0, 20)} notes: {subject}"))
    if kind == 3:
        return rng.choice((f"{subject}, print ${rng.randint(10, 4000):,}.{rng.randint(0, 99):02d}",
                           f"{subject} for € {rng.randint(5, 900)},{rng.randint(0, 99):02d}",
                           f"{subject}, USD {rng.randint(1, 99)} {rng.randint(100, 999)} incl. shipping",
                           f"{subject} - only {rng.randint(2, 99)}.99 GBP"))
    if kind == 4:
        return rng.choice((f"{subject}, order #{rng.randint(100000000, 999999999)}",
                           f"invoice {y}-{rng.randint(1000, 9999)}-{rng.randint(100, 999)} for {subject}",
                           f"{subject}, item no. {rng.randint(1000, 9999)} {rng.randint(1000, 9999)} {rng.randint(10, 99)}",
                           f"{subject} (ref {rng.randint(10000000, 99999999)})",
                           f"lot {rng.randint(100000, 999999)}: {subject}"))
    return rng.choice((f"{subject}, {rng.choice((1920, 2560, 3840))}x{rng.choice((1080, 1440, 2160))} pixels",
                       f"{subject}, 50 mm f/1.8 1/{rng.choice((60, 125, 250, 500))} s ISO {rng.choice((100, 400, 3200))}",
                       f"{subject} in the {rng.randint(1920, 1990) // 10 * 10}s",
                       f"{rng.randint(2, 40)} photos of {subject}, page {rng.randint(1, 300)} of {rng.randint(300, 900)}"))


def _plant(template: str, subject: str, values: list[str], entity: str, sep: str = " ") -> Caption:
    """``template`` with ``values`` (one or more of ``entity``, joined by ``sep``) in the place of ``{v}``."""
    head, tail = template.split("{v}")
    head = head.format(s=subject)
    spans, at = [], len(head)
    for value in values:
        spans.append((entity, at, at + len(value)))
        at += len(value) + len(sep)
    return Caption(head + sep.join(values) + tail.format(s=subject), tuple(spans))


def labelled_captions(n: int = 600, seed: int = 0, clean_fraction: float = 1 / 3,
                      hard_fraction_of_clean: float = 1.0) -> list[Caption]:
    """``n`` captions: ``clean_fraction`` of them clean (of which ``hard_fraction_of_clean`` hard negatives, the
    rest plain captions), the others each carrying one value of one entity type, the types in turn (a quarter of
    the phone captions two numbers); shuffled."""
    rng = random.Random(seed)
    n_clean = round(n * clean_fraction)
    out: list[Caption] = []
    for i in range(n - n_clean):
        entity = ENTITIES[i % len(ENTITIES)]
        subject = rng.choice(SUBJECTS)
        template = rng.choice(CARRIERS[entity])
        values = [MAKERS[entity](rng)]
        sep = " "
        if entity == "PHONE_NUMBER" and rng.random() < 0.25:  # two numbers, one after the other: "tel (808) ..."
            values.append(_phone(rng))
            sep = rng.choice((" ", " ", " / ", ", "))
        caption = _plant(template, subject, values, entity, sep)
        if rng.random() < 0.25:  # a second value of another type in the same caption
            other = ENTITIES[(i + 1 + rng.randrange(len(ENTITIES) - 1)) % len(ENTITIES)]
            value = MAKERS[other](rng)
            start = len(caption.text) + len(" / ")
            caption = Caption(f"{caption.text} / {value}", (*caption.spans, (other, start, start + len(value))))
        out.append(caption)
    n_hard = round(n_clean * hard_fraction_of_clean)
    for i in range(n_clean):
        subject = rng.choice(SUBJECTS)
        out.append(Caption(_hard_negative(rng, subject) if i < n_hard else subject.capitalize()))
    rng.shuffle(out)
    return out
