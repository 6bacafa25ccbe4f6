"""Benchmark workloads: deterministic requests for speculative-decoding measurements.

Two kinds of traffic, both built here from a seed (no files, no network):

- `document_requests`: back-office document work on real-looking documents generated in this
  module (KYC onboarding memos, supplier invoices, batch-release reports, insurance policy
  letters, meeting minutes). Each request is a JSON extraction (with a JSON schema whose values
  are copied verbatim from the text), a summary, or a "rewrite this paragraph in plain English
  and fix the typos" (copy-heavy). This is where n-gram drafts from the prompt are often right.
- `chat_requests`: short open questions, advice, small talk and short code questions, whose
  answers copy nothing from the prompt. Speculation must not make these slower.

Request `i` depends only on `(seed, i)`, so `document_requests(8)` is a prefix of
`document_requests(16)`. Every prompt stays well under 900 tokens (SmolLM2, 2048 context).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DOC_KINDS = ("extract", "summary", "rewrite")
CHAT_KIND = "chat"
DOC_MAX_TOKENS = (128, 200)
CHAT_MAX_TOKENS = (96, 128)
MIN_DOC_WORDS, MAX_DOC_WORDS = 150, 400


@dataclass
class WorkloadRequest:
    """One chat-completion request of a benchmark workload."""

    kind: str  # "extract" | "summary" | "rewrite" | "chat"
    messages: list[dict[str, str]]
    max_tokens: int
    schema: dict | None = None  # JSON schema the answer must follow ("extract" only)

    def openai_body(self, model: str, temperature: float = 0.0) -> dict[str, Any]:
        """The OpenAI `/v1/chat/completions` body for this request (schema as
        `response_format` json_schema when there is one)."""
        body: dict[str, Any] = {
            "model": model,
            "messages": self.messages,
            "max_tokens": self.max_tokens,
            "temperature": temperature,
        }
        if self.schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "extraction", "schema": self.schema, "strict": True},
            }
        return body


@dataclass
class Document:
    """A generated document: its title, paragraphs and the values an extraction should find."""

    kind: str  # "kyc" | "invoice" | "batch_release" | "policy" | "minutes"
    title: str
    paragraphs: list[str]
    fields: dict[str, str] = field(default_factory=dict)  # every value appears in the text

    @property
    def text(self) -> str:
        """The document as plain text: title, blank line, paragraphs."""
        return "\n\n".join([self.title, *self.paragraphs])


# ---------------------------------------------------------------------------- vocabulary

FIRST = (
    "Maria", "Jonas", "Aisha", "Pieter", "Chiara", "Tomasz", "Ingrid", "Rafael", "Sofia",
    "Mehmet", "Elena", "Lukas", "Hanna", "Olivier", "Nadia", "Bartosz", "Freya", "Matteo",
    "Camille", "Jakub", "Leila", "Henrik", "Ana", "Dmitri", "Sanne", "Yusuf", "Clara", "Niamh",
)  # fmt: skip
LAST = (
    "Keller", "van der Berg", "Rahman", "Janssens", "Moretti", "Kowalczyk", "Lindqvist",
    "Ortega", "Papadopoulou", "Yilmaz", "Novak", "Fischer", "Lehtonen", "Dubois", "Haddad",
    "Wisniewski", "Andersen", "Esposito", "Laurent", "Dvorak", "Mansour", "Berggren",
    "Ferreira", "Volkov", "de Vries", "Demir", "Schmitt", "O'Sullivan",
)  # fmt: skip
# (country code, city, postcode pattern with '9' for a digit, street names, nationality)
PLACES = (
    ("DE", "Frankfurt am Main", "60999", ("Mainzer Landstrasse", "Hanauer Strasse"), "German"),
    ("NL", "Utrecht", "3599 AB", ("Oudegracht", "Biltstraat"), "Dutch"),
    ("FR", "Lyon", "69009", ("rue de la Republique", "cours Lafayette"), "French"),
    ("IT", "Milano", "20199", ("Via Torino", "Corso Buenos Aires"), "Italian"),
    ("BE", "Gent", "9099", ("Veldstraat", "Kortrijksesteenweg"), "Belgian"),
    ("AT", "Graz", "8099", ("Herrengasse", "Annenstrasse"), "Austrian"),
    ("ES", "Valencia", "46099", ("Calle de Colon", "Avenida del Puerto"), "Spanish"),
    ("PL", "Poznan", "61-999", ("ulica Polwiejska", "ulica Garbary"), "Polish"),
    ("IE", "Cork", "T12 9X99", ("Oliver Plunkett Street", "Washington Street"), "Irish"),
)  # fmt: skip
IBAN_LENGTH = {"DE": 22, "NL": 18, "FR": 27, "IT": 27, "BE": 16, "AT": 20, "ES": 24}
IBAN_LENGTH.update({"PL": 28, "IE": 22})
COMPANIES = (
    "Nordwind Logistik GmbH", "Helix Reagents B.V.", "Atelier Fontaine SARL",
    "Ferrovia Componenti S.p.A.", "Brightwater Facilities Ltd", "Kestrel Analytical NV",
    "Alpenglas Verpackung AG", "Solara Packaging S.L.", "Vistula Data Systems Sp. z o.o.",
    "Meridian Cleanroom Services Ltd", "Oakridge Office Supplies Ltd", "Lumen Pharma Services GmbH",
)  # fmt: skip
ITEMS = (
    ("Nitrile gloves, size M, box of 100", 6.40), ("Amber glass vials 10 ml, tray of 200", 48.90),
    ("HEPA filter cartridge H14", 212.00), ("Laboratory coat, polyester-cotton", 27.50),
    ("Calibration service, analytical balance", 185.00), ("Pallet transport Zone 2", 96.00),
    ("Printer toner, black, high yield", 74.20), ("Ethanol 70% v/v, 5 L canister", 18.75),
    ("Data logger, temperature -40 to +85 C", 129.00), ("Archive box, acid-free", 3.85),
    ("On-site support, per hour", 88.00), ("Stainless steel sample spoon", 11.30),
)  # fmt: skip
PRODUCTS = (
    ("Amoxicillin 500 mg capsules", "assay", "95.0-105.0%"),
    ("Paracetamol 1 g tablets", "dissolution at 30 min", "not less than 80%"),
    ("Ibuprofen 400 mg film-coated tablets", "assay", "95.0-105.0%"),
    ("Metformin 850 mg tablets", "uniformity of dosage units", "acceptance value at most 15.0"),
    ("Sodium chloride 0.9% infusion 500 ml", "endotoxins", "below 0.5 EU/ml"),
    ("Omeprazole 20 mg gastro-resistant capsules", "gastro-resistance", "not more than 10%"),
)  # fmt: skip
MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip
OCCUPATIONS = (
    "self-employed architect", "pharmacist", "software consultant", "owner of a bakery",
    "retired civil servant", "logistics manager", "dentist", "freelance translator",
)  # fmt: skip
FUNDS = (
    "salary and savings from employment", "the sale of a family property",
    "profits of a small business", "an inheritance from a parent", "a pension lump sum",
)  # fmt: skip
COMMITTEES = (
    "Credit Risk Committee", "Quality Review Board", "Data Protection Working Group",
    "Procurement Steering Group", "Pharmacovigilance Committee", "IT Change Advisory Board",
)  # fmt: skip
TOPICS = (
    "the renewal of the cloud hosting contract", "the backlog of open deviations",
    "the quarterly review of high-risk customers", "the new supplier qualification procedure",
    "the migration of archived records", "the audit findings on access rights",
    "the training plan for new analysts", "the budget for laboratory equipment",
)  # fmt: skip


# ---------------------------------------------------------------------------- small values


def _name(rng: random.Random) -> str:
    return f"{rng.choice(FIRST)} {rng.choice(LAST)}"


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def _date(rng: random.Random, year: int = 2026) -> str:
    return f"{rng.randint(1, 28)} {rng.choice(MONTHS)} {year}"


def _amount(rng: random.Random, low: float, high: float, currency: str = "EUR") -> str:
    return f"{currency} {rng.uniform(low, high):,.2f}"


def _address(rng: random.Random, place: tuple) -> str:
    _, city, pattern, streets, _ = place
    postcode = "".join(_digits(rng, 1) if c == "9" else c for c in pattern)
    return f"{rng.choice(streets)} {rng.randint(1, 180)}, {postcode} {city}"


def _iban(rng: random.Random, country: str) -> str:
    """An IBAN-like number with valid mod-97 check digits, printed in groups of four."""
    bban = _digits(rng, IBAN_LENGTH.get(country, 22) - 4)
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    check = 98 - int(numeric) % 97
    raw = f"{country}{check:02d}{bban}"
    return " ".join(raw[i : i + 4] for i in range(0, len(raw), 4))


def _fill(rng: random.Random, paragraphs: list[str], filler: tuple[str, ...]) -> list[str]:
    """Add filler paragraphs (3-4 sentences, shuffled) until the document reaches a word
    count drawn in [MIN_DOC_WORDS, MAX_DOC_WORDS]; never past MAX_DOC_WORDS."""
    target = rng.randint(MIN_DOC_WORDS, MAX_DOC_WORDS)
    pool = list(filler + GENERIC_FILLER)
    rng.shuffle(pool)
    words = sum(len(p.split()) for p in paragraphs)
    out = list(paragraphs)
    while pool and words < target:
        group: list[str] = []
        size = rng.randint(3, 4)
        while pool and len(group) < size:
            sentence = pool.pop()
            if words + len(sentence.split()) > MAX_DOC_WORDS:
                continue
            group.append(sentence)
            words += len(sentence.split())
        if not group:
            break
        out.insert(rng.randint(1, len(out)), " ".join(group))
    return out


GENERIC_FILLER = (
    "This document is classified as internal and must not be forwarded outside the organisation "
    "without the approval of the data owner.",
    "Copies held on personal devices must be deleted once the matter is closed, in line with the "
    "records retention schedule.",
    "Questions about this document should be addressed to the responsible department through the "
    "usual ticketing channel rather than by personal e-mail.",
    "All times are given in Central European Time unless stated otherwise.",
    "The figures quoted here were checked against the source system on the day of writing and may "
    "change after later corrections.",
    "A scanned copy of the signed original is attached to the case in the document management "
    "system, where the version history can be consulted.",
    "Personal data in this document is processed for the purpose stated above and is kept no "
    "longer than the law or our contracts require.",
    "Where this document refers to an earlier agreement, the earlier agreement prevails in case "
    "of doubt.",
    "Abbreviations follow the internal style guide, which is available on the intranet.",
    "The department confirms that the four-eyes principle was applied before this document was "
    "issued.",
    "Any change to the details above must be requested in writing and confirmed by a second "
    "authorised signatory.",
    "Supporting evidence is retained for ten years from the end of the calendar year in which "
    "this document was issued.",
    "If this document reached you by mistake, please inform the sender and delete it.",
)


# ---------------------------------------------------------------------------- documents


def kyc_memo(rng: random.Random) -> Document:
    """A KYC onboarding memo for a private client."""
    place = rng.choice(PLACES)
    client, officer = _name(rng), _name(rng)
    f = {
        "client_name": client,
        "date_of_birth": _date(rng, rng.randint(1950, 2002)),
        "nationality": place[4],
        "address": _address(rng, place),
        "iban": _iban(rng, place[0]),
        "risk_rating": rng.choice(("low", "medium", "high")),
        "onboarding_date": _date(rng),
        "account_officer": officer,
        "expected_monthly_turnover": _amount(rng, 2_000, 60_000),
    }
    pep = rng.choice(("is not", "is not", "is"))
    paragraphs = [
        f"Client {f['client_name']}, born {f['date_of_birth']}, {f['nationality']} national, "
        f"residing at {f['address']}, applied to open a current account on "
        f"{f['onboarding_date']}. The client works as a {rng.choice(OCCUPATIONS)}.",
        f"Identity was verified against a passport (number {_digits(rng, 2)}"
        f"{rng.choice('CFGHJK')}{_digits(rng, 6)}) and a recent utility bill. The account will "
        f"be held under IBAN {f['iban']}. The declared source of funds is {rng.choice(FUNDS)}; "
        f"expected monthly turnover is {f['expected_monthly_turnover']}.",
        f"Screening found that the client {pep} a politically exposed person and produced no "
        f"sanctions match. Based on the questionnaire, the risk rating is {f['risk_rating']}. "
        f"Account officer: {f['account_officer']}.",
    ]
    filler = (
        "Enhanced due diligence applies only where the risk rating is high or the client is a "
        "politically exposed person.",
        "The next periodic review is due within twelve months for medium risk and within three "
        "years for low risk.",
        "Unusual transactions must be reported to the compliance team within one working day.",
        "The client was informed of the bank's privacy notice and signed the consent form.",
        "A copy of every identification document is stored in the customer file with a hash of "
        "the scanned image.",
        "Cash deposits above the internal threshold require a written explanation from the client.",
    )
    return Document("kyc", f"KYC onboarding memo - {client}", _fill(rng, paragraphs, filler), f)


def supplier_invoice(rng: random.Random) -> Document:
    """A supplier invoice with line items, totals and payment details."""
    place = rng.choice(PLACES)
    supplier = rng.choice(COMPANIES)
    lines, net = [], 0.0
    for item, price in rng.sample(ITEMS, rng.randint(2, 4)):
        qty = rng.randint(1, 40)
        net += qty * price
        lines.append(f"{qty} x {item} at EUR {price:,.2f}")
    vat_rate = rng.choice((19, 21, 20, 22))
    f = {
        "invoice_number": f"INV-{rng.randint(2025, 2026)}-{_digits(rng, 5)}",
        "supplier_name": supplier,
        "supplier_address": _address(rng, place),
        "vat_number": f"{place[0]}{_digits(rng, 9)}",
        "invoice_date": _date(rng),
        "due_date": _date(rng),
        "total_amount": f"EUR {net * (1 + vat_rate / 100):,.2f}",
        "iban": _iban(rng, place[0]),
        "payment_reference": f"PO-{_digits(rng, 6)}",
    }
    paragraphs = [
        f"Invoice {f['invoice_number']} from {f['supplier_name']}, {f['supplier_address']}, "
        f"VAT number {f['vat_number']}, dated {f['invoice_date']}.",
        "Items delivered: " + "; ".join(lines) + f". Net amount EUR {net:,.2f}, VAT {vat_rate}%, "
        f"total amount due {f['total_amount']}.",
        f"Please pay by {f['due_date']} to IBAN {f['iban']}, quoting the payment reference "
        f"{f['payment_reference']}. Goods were received by {_name(rng)} at the central store.",
    ]
    filler = (
        "Late payment may incur interest at the statutory rate plus eight percentage points.",
        "Claims about missing or damaged goods must be made in writing within eight days of "
        "delivery.",
        "Prices are quoted in euro and exclude transport unless a transport line appears above.",
        "The goods remain the property of the supplier until the invoice is paid in full.",
        "This invoice was matched to the purchase order and the goods receipt by accounts "
        "payable before approval.",
        "Partial deliveries are invoiced separately and carry their own reference numbers.",
    )
    title = f"Supplier invoice {f['invoice_number']}"
    return Document("invoice", title, _fill(rng, paragraphs, filler), f)


def batch_release(rng: random.Random) -> Document:
    """A pharmaceutical batch-release report signed by a qualified person."""
    product, test, spec = rng.choice(PRODUCTS)
    place = rng.choice(PLACES)
    released = rng.random() < 0.8
    f = {
        "product": product,
        "batch_number": f"{rng.choice('ABKLMT')}{_digits(rng, 2)}-{_digits(rng, 4)}",
        "manufacturing_date": _date(rng, 2025),
        "expiry_date": _date(rng, rng.randint(2027, 2029)),
        "manufacturing_site": f"{rng.choice(COMPANIES)}, {place[1]}",
        "qualified_person": _name(rng),
        "test_result": f"{rng.uniform(96.0, 104.0):.1f}%",
        "decision": "released" if released else "rejected",
    }
    deviation = rng.choice(
        (
            "No deviations were raised during manufacture.",
            f"Deviation DEV-{_digits(rng, 4)} (a temperature excursion of 40 minutes in the "
            "granulation room) was investigated and closed with no impact on quality.",
            f"Deviation DEV-{_digits(rng, 4)} (a missing signature in the batch record) was "
            "closed as a documentation error.",
        )
    )
    paragraphs = [
        f"Batch {f['batch_number']} of {f['product']} was manufactured on "
        f"{f['manufacturing_date']} at {f['manufacturing_site']} and has an expiry date of "
        f"{f['expiry_date']}.",
        f"Quality control tested the batch for {test} (specification {spec}); the result was "
        f"{f['test_result']}. Appearance, identity and microbial limits complied. {deviation}",
        f"Having reviewed the batch record and the test results, the qualified person "
        f"{f['qualified_person']} certified that the batch is {f['decision']}.",
    ]
    filler = (
        "Retained samples are stored for one year beyond the expiry date under controlled "
        "conditions.",
        "The stability programme continues with the next time point at twelve months.",
        "All analytical instruments used were within their calibration period.",
        "The batch record was reviewed line by line by a second person from quality assurance.",
        "Any complaint about this batch must be forwarded to quality assurance within 24 hours.",
        "Shipping is allowed only after the release status is updated in the warehouse system.",
    )
    title = f"Batch release report - {f['batch_number']}"
    return Document("batch_release", title, _fill(rng, paragraphs, filler), f)


def policy_letter(rng: random.Random) -> Document:
    """A letter confirming changes to an insurance policy."""
    place = rng.choice(PLACES)
    f = {
        "policy_number": f"POL-{_digits(rng, 3)}-{_digits(rng, 6)}",
        "policyholder": _name(rng),
        "address": _address(rng, place),
        "effective_date": _date(rng),
        "annual_premium": _amount(rng, 300, 4_000),
        "coverage_limit": _amount(rng, 50_000, 900_000),
        "deductible": f"EUR {rng.choice((150, 250, 500, 1000)):,}.00",
        "agent": _name(rng),
    }
    cover = rng.choice(("home and contents", "professional liability", "motor fleet", "travel"))
    paragraphs = [
        f"Dear {f['policyholder']}, {f['address']}. We confirm the changes to your {cover} "
        f"insurance, policy number {f['policy_number']}, which take effect on "
        f"{f['effective_date']}.",
        f"From that date the coverage limit is {f['coverage_limit']} and the deductible per claim "
        f"is {f['deductible']}. Your annual premium becomes {f['annual_premium']}, payable in "
        f"{rng.choice(('one instalment', 'four instalments', 'twelve monthly instalments'))}.",
        f"If anything in this letter is not correct, please contact your agent {f['agent']} "
        "within thirty days. All other terms and conditions remain unchanged.",
    ]
    filler = (
        "You have the right to cancel the policy within fourteen days of receiving this letter.",
        "Claims must be reported as soon as possible and in any case within thirty days.",
        "The premium includes insurance tax at the rate applicable on the effective date.",
        "Please keep this letter together with your policy schedule.",
        "We may ask for evidence of the value of insured items when a claim is made.",
        "Our complaints procedure is described in the policy conditions and on our website.",
    )
    title = f"Policy amendment - {f['policy_number']}"
    return Document("policy", title, _fill(rng, paragraphs, filler), f)


def meeting_minutes(rng: random.Random) -> Document:
    """Minutes of a committee meeting with decisions and action items."""
    people: list[str] = []
    while len(people) < 6:
        name = _name(rng)
        if name not in people:
            people.append(name)
    topic_a, topic_b = rng.sample(TOPICS, 2)
    f = {
        "committee": rng.choice(COMMITTEES),
        "meeting_date": _date(rng),
        "chair": people[0],
        "secretary": people[1],
        "decision": f"approve {topic_a}",
        "action_owner": people[2],
        "action_due_date": _date(rng),
        "next_meeting": _date(rng),
    }
    paragraphs = [
        f"Minutes of the {f['committee']} held on {f['meeting_date']}. Chair: {f['chair']}. "
        f"Secretary: {f['secretary']}. Present: {', '.join(people[2:])}.",
        f"The committee discussed {topic_a}. After questions on cost and timing it was decided "
        f"to {f['decision']}, subject to a final check by the legal team.",
        f"The committee then reviewed {topic_b}. {f['action_owner']} will prepare a written "
        f"proposal by {f['action_due_date']}. The next meeting is scheduled for "
        f"{f['next_meeting']}.",
    ]
    filler = (
        "The minutes of the previous meeting were approved without changes.",
        "One member declared a possible conflict of interest and did not take part in the vote.",
        "The chair reminded members that papers must be circulated five working days in advance.",
        "Open actions from earlier meetings were reviewed; two remain overdue.",
        "The secretary will circulate the presentation slides with these minutes.",
        "No other business was raised and the meeting closed on time.",
    )
    title = f"Minutes - {f['committee']}, {f['meeting_date']}"
    return Document("minutes", title, _fill(rng, paragraphs, filler), f)


DOCUMENT_MAKERS: tuple[Callable[[random.Random], Document], ...] = (
    kyc_memo,
    supplier_invoice,
    batch_release,
    policy_letter,
    meeting_minutes,
)


def _rng(seed: int, index: int, stream: int) -> random.Random:
    """The random source of item `index` of a stream: independent of how many are asked."""
    return random.Random(seed * 1_000_003 + index * 7 + stream)


def sample_documents(n: int, seed: int = 0) -> list[Document]:
    """`n` generated documents, cycling through the five document types."""
    return [DOCUMENT_MAKERS[i % len(DOCUMENT_MAKERS)](_rng(seed, i, 1)) for i in range(n)]


# ---------------------------------------------------------------------------- requests

SYSTEM_DOCS = "You are a careful assistant for back-office document work. Answer in English."


def _typo(rng: random.Random, word: str) -> str:
    """One typo in a word: swapped, dropped or doubled inner letter."""
    i = rng.randint(1, len(word) - 3)
    how = rng.randrange(3)
    if how == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if how == 1:
        return word[:i] + word[i + 1 :]
    return word[:i] + word[i] + word[i:]


def with_typos(rng: random.Random, text: str, rate: float = 0.12) -> str:
    """The text with typos in about `rate` of its plain lower-case words (names, numbers and
    dates are left alone, so a correct rewrite can copy them)."""
    words = text.split(" ")
    for i, word in enumerate(words):
        if len(word) >= 5 and word.isalpha() and word.islower() and rng.random() < rate:
            words[i] = _typo(rng, word)
    return " ".join(words)


def extraction_schema(fields: list[str]) -> dict:
    """A JSON schema: an object with these string fields, all required, nothing else."""
    return {
        "type": "object",
        "properties": {name: {"type": "string"} for name in fields},
        "required": list(fields),
        "additionalProperties": False,
    }


def _extract(rng: random.Random, doc: Document) -> WorkloadRequest:
    names = list(doc.fields)
    chosen = sorted(rng.sample(names, rng.randint(4, min(8, len(names)))), key=names.index)
    user = (
        "Extract the following fields from the document below and answer with one JSON object "
        f"only. Copy each value exactly as written in the document. Fields: {', '.join(chosen)}."
        f"\n\n{doc.text}"
    )
    return WorkloadRequest(
        "extract",
        [{"role": "system", "content": SYSTEM_DOCS}, {"role": "user", "content": user}],
        rng.randint(*DOC_MAX_TOKENS),
        extraction_schema(chosen),
    )


def _summary(rng: random.Random, doc: Document) -> WorkloadRequest:
    ask = rng.choice(
        (
            "Summarize the document below in three to five sentences. Keep names, dates, "
            "amounts and reference numbers exactly as written.",
            "Write a short summary of the document below for a colleague who has not read it. "
            "Mention every name, date, amount and reference number it contains.",
            "Summarize the key facts of this document as a bullet list, quoting numbers and "
            "dates exactly.",
        )
    )
    return WorkloadRequest(
        "summary",
        [
            {"role": "system", "content": SYSTEM_DOCS},
            {"role": "user", "content": f"{ask}\n\n{doc.text}"},
        ],
        rng.randint(*DOC_MAX_TOKENS),
    )


def _rewrite(rng: random.Random, doc: Document) -> WorkloadRequest:
    # The two neighbouring paragraphs with the most words (~80-200): a rewrite copies most of it.
    pairs = [doc.paragraphs[i : i + 2] for i in range(max(1, len(doc.paragraphs) - 1))]
    paragraph = " ".join(max(pairs, key=lambda pair: len(" ".join(pair).split())))
    ask = rng.choice(
        (
            "Rewrite this paragraph in plain English and fix the typos. Keep every name, "
            "number and date exactly as written.",
            "Fix the spelling mistakes in this paragraph. Change nothing else.",
            "Correct the typos in the following text and return the corrected text only.",
        )
    )
    return WorkloadRequest(
        "rewrite",
        [
            {"role": "system", "content": SYSTEM_DOCS},
            {"role": "user", "content": f"{ask}\n\n{with_typos(rng, paragraph)}"},
        ],
        rng.randint(*DOC_MAX_TOKENS),
    )


def document_requests(n: int, seed: int = 0) -> list[WorkloadRequest]:
    """`n` document requests, cycling extract -> summary -> rewrite over the five document
    types; request `i` depends only on `(seed, i)`."""
    makers = {"extract": _extract, "summary": _summary, "rewrite": _rewrite}
    docs = sample_documents(n, seed)
    return [
        makers[DOC_KINDS[i % len(DOC_KINDS)]](_rng(seed, i, 2), doc) for i, doc in enumerate(docs)
    ]


CHAT_PROMPTS = (
    # open questions
    "Why is the sky blue?",
    "What causes the seasons on Earth?",
    "How do vaccines train the immune system?",
    "What is the difference between weather and climate?",
    "Why do cats purr?",
    "How does a bicycle stay upright when it moves?",
    "What was the Renaissance, in a few sentences?",
    "How do bees make honey?",
    "What is inflation and why does it matter to savers?",
    "Why do we have leap years?",
    # advice
    "I have a job interview tomorrow. Any tips to stay calm?",
    "How can I get better at waking up early?",
    "What should I pack for a three-day hiking trip?",
    "How do I start learning to play the guitar as an adult?",
    "My houseplant's leaves are turning yellow. What could be wrong?",
    "How can I make my team meetings shorter and more useful?",
    "What is a good way to start saving money each month?",
    "Give me three ideas for a rainy Sunday afternoon with kids.",
    "How do I politely decline an invitation from a colleague?",
    "What are some healthy breakfasts that take less than five minutes?",
    # small talk
    "Hi! How are you today?",
    "Tell me something interesting about octopuses.",
    "What's your favourite season, and why?",
    "Can you tell me a short joke about computers?",
    "I just finished a marathon!",
    "Recommend a classic novel for a long train ride.",
    "What would you name a friendly robot?",
    "Write a haiku about autumn rain.",
    # short code questions
    "How do I reverse a list in Python?",
    "What is the difference between a list and a tuple in Python?",
    "Write a Python function that checks whether a number is prime.",
    "How do I read a text file line by line in Python?",
    "What does `git rebase` do, in simple terms?",
    "Explain what a SQL JOIN is with a tiny example.",
    "How can I remove duplicates from a list in JavaScript?",
    "What is a race condition?",
    "Write a bash one-liner that counts the lines in all .txt files in a folder.",
    "What is the difference between == and is in Python?",
)
CHAT_SYSTEMS = (
    "You are a helpful assistant.",
    "You are a friendly assistant. Keep answers short.",
    "You are a concise, knowledgeable assistant.",
)


def chat_requests(n: int, seed: int = 0) -> list[WorkloadRequest]:
    """`n` chat requests: short questions whose answers copy nothing from the prompt. The
    prompts are a seeded permutation of CHAT_PROMPTS (no repeats before all are used)."""
    order = random.Random(seed).sample(range(len(CHAT_PROMPTS)), len(CHAT_PROMPTS))
    out = []
    for i in range(n):
        rng = _rng(seed, i, 3)
        prompt = CHAT_PROMPTS[order[i % len(order)]]
        messages = [
            {"role": "system", "content": rng.choice(CHAT_SYSTEMS)},
            {"role": "user", "content": prompt},
        ]
        out.append(WorkloadRequest(CHAT_KIND, messages, rng.randint(*CHAT_MAX_TOKENS)))
    return out
