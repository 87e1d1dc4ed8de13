"""Build the contact-extraction dataset: synthetic texts rendered from known contact fields.

Each example starts from a made-up person (name, company, title, email, phone). A template
renders some of those fields into a realistic text (signature, chat message, business card,
form, voicemail...) and records exactly which values it wrote; every field it left out is
null in the expected output. Expected outputs therefore match the text by construction, and
the script checks that each value occurs verbatim in its text and that every output validates
against ``schemas/contact-extraction.json``.

    python training/data/make_contacts.py        # rewrites the .jsonl files next to it

A third file, ``contact-extraction.traffic.jsonl``, holds requests of neither split (another
seed) that ``bench/loop.py`` replays as the task's live traffic.
"""

from __future__ import annotations

import json
import random
import unicodedata
from collections.abc import Callable
from pathlib import Path

from jsonschema import Draft202012Validator, FormatChecker

SEED = 20240611
N_TRAIN = 200
N_TEST = 50
N_TRAFFIC = 120  # requests replayed as live traffic by bench/loop.py: inputs of neither split
MAX_WORDS = 60
HERE = Path(__file__).resolve().parent
SCHEMA = HERE.parent.parent / "schemas" / "contact-extraction.json"
TRAIN = HERE / "contact-extraction.train.jsonl"
TEST = HERE / "contact-extraction.test.jsonl"
TRAFFIC = HERE / "contact-extraction.traffic.jsonl"
FIELDS = ("name", "email", "phone", "company", "title")

FIRST = [
    "Amara",
    "Ben",
    "Carmen",
    "Dmitri",
    "Elena",
    "Farid",
    "Greta",
    "Hiroshi",
    "Ines",
    "Jamal",
    "Katarzyna",
    "Liam",
    "Mei",
    "Nikhil",
    "Oksana",
    "Pablo",
    "Quinn",
    "Rosa",
    "Stefan",
    "Tariq",
    "Ursula",
    "Vikram",
    "Wen",
    "Ximena",
    "Yusuf",
    "Zoë",
    "Andrés",
    "Bianca",
    "Chidi",
    "Dana",
    "Emil",
    "Fatima",
    "Gabriel",
    "Hannah",
    "Ivan",
    "Julia",
    "Kofi",
    "Leila",
    "Marco",
    "Noor",
    "Owen",
    "Patricia",
    "Ravi",
    "Sofia",
    "Thomas",
    "Uma",
    "Victor",
    "Yara",
]
LAST = [
    "Adeyemi",
    "Bergström",
    "Castillo",
    "Dubois",
    "Eriksen",
    "Fischer",
    "García",
    "Huang",
    "Iyer",
    "Jensen",
    "Kim",
    "López",
    "Müller",
    "Nakamura",
    "O'Brien",
    "Petrov",
    "Quintero",
    "Rossi",
    "Santos",
    "Thompson",
    "Urquhart",
    "Van Dijk",
    "Walsh",
    "Xu",
    "Yilmaz",
    "Zhang",
    "Novak",
    "Mensah",
    "Lindqvist",
    "Kowalski",
    "Haddad",
    "Fernandes",
    "Chen",
    "Brennan",
    "Abara",
    "Moreau",
    "Sato",
    "Patel",
    "Horvat",
    "Silva",
]
# (company, email domain, country for phone formats, job titles that fit the company)
COMPANIES = [
    ("Northwind Logistics", "northwindlogistics.com", "us", ["Fleet Manager", "Dispatch Lead"]),
    ("Bluefin Analytics", "bluefin-analytics.io", "us", ["Senior Data Analyst", "Data Scientist"]),
    ("Copperleaf Design Studio", "copperleaf.design", "uk", ["Creative Director", "Designer"]),
    ("Halvorsen & Berg", "halvorsenberg.no", "de", ["Partner", "Senior Associate"]),
    ("Meridian Health Partners", "meridianhp.org", "us", ["Clinical Director", "Nurse Manager"]),
    ("Tidewater Marine Services", "tidewatermarine.com", "us", ["Marine Surveyor", "Port Captain"]),
    ("Orchard Lane Bakery", "orchardlanebakery.co.uk", "uk", ["Head Baker", "Store Manager"]),
    ("Voltaic Energy Systems", "voltaic-energy.de", "de", ["Solar Engineer", "Sales Director"]),
    ("Saffron & Sage Catering", "saffronsage.com.au", "au", ["Head Chef", "Events Coordinator"]),
    ("Granite Peak Capital", "granitepeak.vc", "us", ["Principal", "Investment Associate"]),
    ("Lumio Robotics", "lumio.ai", "us", ["Chief Technology Officer", "Robotics Engineer"]),
    ("Kestrel Legal LLP", "kestrel-legal.co.uk", "uk", ["Partner", "Trainee Solicitor"]),
    ("Atelier Moreau", "ateliermoreau.fr", "fr", ["Architecte", "Chef de projet"]),
    ("Pavo Software", "pavosoftware.in", "in", ["Software Engineer", "Engineering Manager"]),
    ("Redwood Dental Group", "redwooddental.com", "us", ["Dentist", "Practice Manager"]),
    ("Solstice Travel", "solstice-travel.com", "uk", ["Travel Consultant", "Head of Marketing"]),
    ("Ironbridge Construction", "ironbridgebuild.com.au", "au", ["Site Supervisor", "Estimator"]),
    (
        "Fernhill Veterinary Clinic",
        "fernhillvets.co.uk",
        "uk",
        ["Veterinary Surgeon", "Head Nurse"],
    ),
    ("Quantix Labs", "quantixlabs.com", "us", ["Product Manager", "UX Researcher"]),
    ("Brightwater Schools Trust", "brightwater.sch.uk", "uk", ["Headteacher", "Business Manager"]),
    ("Nordlicht Medien GmbH", "nordlicht-medien.de", "de", ["Redakteurin", "Geschäftsführer"]),
    ("Cobalt Cloud", "cobaltcloud.dev", "us", ["Site Reliability Engineer", "VP of Sales"]),
    ("Papaya Mobile", "papayamobile.in", "in", ["Android Developer", "Growth Lead"]),
    ("Verdant Landscaping", "verdantlandscaping.com", "us", ["Owner", "Crew Lead"]),
    ("Maison Clément", "maisonclement.fr", "fr", ["Sommelier", "Directeur commercial"]),
    ("Summit Physiotherapy", "summitphysio.com.au", "au", ["Physiotherapist", "Clinic Manager"]),
    ("Larkspur Publishing", "larkspurbooks.com", "us", ["Editor", "Rights Manager"]),
    ("Anchor Point Insurance", "anchorpoint-ins.com", "us", ["Claims Adjuster", "Underwriter"]),
]
# Titles that fit any company.
TITLES = [
    "Operations Manager",
    "Account Manager",
    "Office Manager",
    "Project Coordinator",
    "HR Business Partner",
    "Founder & CEO",
    "Customer Success Lead",
    "Financial Controller",
    "Managing Director",
    "Procurement Specialist",
    "IT Support Technician",
    "Marketing Assistant",
]
DOCTORS = {"Dentist", "Veterinary Surgeon", "Clinical Director", "Physiotherapist"}
PERSONAL_DOMAINS = ["gmail.com", "outlook.com", "yahoo.com", "proton.me", "icloud.com"]
US_AREAS = ["212", "312", "415", "503", "617", "206", "512", "303", "404", "720", "646", "818"]
CLOSINGS = [
    "Best,",
    "Thanks,",
    "Cheers,",
    "Kind regards,",
    "Regards,",
    "Best regards,",
    "Thank you,",
]
BODIES = [
    "Let me know if Thursday works for a call.",
    "Attached is the revised proposal.",
    "Looking forward to hearing from you.",
    "Happy to answer any questions.",
    "Please see the updated figures below.",
    "Talk soon.",
    "I'll send the contract over by end of day.",
    "Thanks for your patience on this one.",
]
REASONS = [
    "about the invoice you sent last week",
    "regarding the delivery scheduled for Monday",
    "about the proposal we discussed",
    "to follow up on the quote for the office fit-out",
    "about your enquiry on our website",
    "about rescheduling Wednesday's appointment",
    "regarding the open position on your team",
    "to confirm the venue for the workshop",
]
EVENTS = [
    "Web Summit",
    "the SaaStr meetup",
    "the Lisbon trade fair",
    "PyCon",
    "the AWS Summit",
    "the regional business breakfast",
    "the Hannover Messe",
    "a friend's dinner",
]
SUBJECTS = ["Quote", "Next steps", "Invoice", "Meeting", "Contract draft", "Site visit"]
CITIES = ["London", "Austin", "Berlin", "Sydney", "Bangalore", "Lyon", "Toronto", "Oslo"]
QUESTIONS = [
    "Hi, what are your opening hours on public holidays?",
    "Does the annual plan include priority support?",
    "Is the parking garage next to the venue open on Sundays?",
    "Could you resend the link to the onboarding video? The old one expired.",
    "Are dogs allowed on the patio?",
    "When does registration close for the autumn course?",
    "Thanks for the quick reply yesterday, that fixed it.",
    "Can I change the delivery address on an order that has already shipped?",
    "Reminder: the team lunch moved to Friday at 12:30.",
    "Do you offer a student discount?",
    "The meeting notes are in the shared folder now.",
    "Is the 9:15 train to Leeds running today?",
]
CASUAL_REASONS = [
    "we spoke tuesday about the quote",
    "just following up on the delivery",
    "got your note about the invoice",
    "re the booking for friday",
    "about the keys for the flat",
    "sorry I missed your call",
]
MAILBOXES = ["info", "hello", "bookings", "sales", "office", "support"]

Person = dict[str, str]
Rendered = tuple[str, dict[str, str | None]]


def ascii_slug(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if c.isascii() and c.isalnum()).lower()


def make_email(rng: random.Random, first: str, last: str, domain: str) -> str:
    f, la = ascii_slug(first), ascii_slug(last)
    local = rng.choice([f"{f}.{la}", f"{f[0]}.{la}", f, f"{f}{la}", f"{f[0]}{la}", f"{f}_{la}"])
    return f"{local}@{domain}"


def make_phone(rng: random.Random, country: str) -> str:
    def d(n: int) -> str:
        return "".join(str(rng.randint(0, 9)) for _ in range(n))

    if country == "us":
        area, line = rng.choice(US_AREAS), f"01{d(2)}"
        return rng.choice(
            [
                f"({area}) 555-{line}",
                f"{area}-555-{line}",
                f"{area}.555.{line}",
                f"+1 {area} 555 {line}",
                f"+1-{area}-555-{line}",
            ]
        )
    if country == "uk":
        return rng.choice(
            [f"020 7946 0{d(3)}", f"+44 20 7946 0{d(3)}", f"07700 900{d(3)}", f"+44 7700 900{d(3)}"]
        )
    if country == "de":
        return rng.choice([f"+49 30 {d(4)} {d(3)}", f"030 {d(7)}", f"+49 89 {d(3)} {d(4)}"])
    if country == "fr":
        return rng.choice([f"+33 1 {d(2)} {d(2)} {d(2)} {d(2)}", f"01 {d(2)} {d(2)} {d(2)} {d(2)}"])
    if country == "au":
        return rng.choice([f"0491 570 {d(3)}", f"+61 2 5550 {d(4)}", f"(02) 5550 {d(4)}"])
    return rng.choice([f"+91 98{d(3)} {d(5)}", f"098{d(3)} {d(5)}"])  # in


def keep(rng: random.Random, p: float) -> bool:
    return rng.random() < p


def make_person(rng: random.Random) -> Person:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    company, domain, country, fitting = rng.choice(COMPANIES)
    if rng.random() < 0.15:
        country = rng.choice(["us", "uk", "de", "fr", "au", "in"])
    work = make_email(rng, first, last, domain)
    personal = make_email(rng, first, last, rng.choice(PERSONAL_DOMAINS))
    return {
        "first": first,
        "name": f"{first} {last}",
        "company": company,
        "domain": domain,
        "title": rng.choice(fitting if keep(rng, 0.65) else TITLES),
        "email": work,
        "personal_email": personal,
        "mailbox": f"{rng.choice(MAILBOXES)}@{domain}",
        "phone": make_phone(rng, country),
    }


class Out:
    """The values a template wrote; everything it did not write stays null."""

    def __init__(self) -> None:
        self.values: dict[str, str | None] = dict.fromkeys(FIELDS)

    def put(self, field: str, value: str) -> str:
        self.values[field] = value
        return value


def signature(rng: random.Random, p: Person) -> Rendered:
    o = Out()
    prefix = "Dr. " if p["title"] in DOCTORS and keep(rng, 0.5) else ""
    lines = [rng.choice(BODIES), "", rng.choice(CLOSINGS), prefix + o.put("name", p["name"])]
    has_title, has_company = keep(rng, 0.8), keep(rng, 0.85)
    if has_title and has_company:
        sep = rng.choice([", ", " | ", "\n", " at "])
        lines.append(o.put("title", p["title"]) + sep + o.put("company", p["company"]))
    elif has_title:
        lines.append(o.put("title", p["title"]))
    elif has_company:
        lines.append(o.put("company", p["company"]))
    if keep(rng, 0.75):
        lines.append(
            rng.choice(["M: ", "T: ", "Tel: ", "Mobile: ", "Phone: ", "", "Direct: "])
            + o.put("phone", p["phone"])
        )
    if keep(rng, 0.7):
        lines.append(rng.choice(["", "E: ", "Email: "]) + o.put("email", p["email"]))
    return "\n".join(lines), o.values


def one_line_signature(rng: random.Random, p: Person) -> Rendered:
    o = Out()
    parts = ["-- " + o.put("name", p["name"])]
    if keep(rng, 0.8):
        parts.append(o.put("title", p["title"]))
    if keep(rng, 0.8):
        parts.append(o.put("company", p["company"]))
    if keep(rng, 0.7):
        parts.append(o.put("phone", p["phone"]))
    if keep(rng, 0.7) or len(parts) == 1:
        parts.append(o.put("email", p["email"]))
    sep = rng.choice([" | ", " · ", " / ", ", "])
    return rng.choice(BODIES) + "\n\n" + sep.join(parts), o.values


def business_card(rng: random.Random, p: Person) -> Rendered:
    o = Out()
    prefix = "Dr. " if p["title"] in DOCTORS and keep(rng, 0.6) else ""
    lines = [
        prefix + o.put("name", p["name"]),
        o.put("title", p["title"]),
        o.put("company", p["company"]),
    ]
    contact = [rng.choice(["", "Tel ", "T ", "Ph: "]) + o.put("phone", p["phone"])]
    if keep(rng, 0.85):
        contact.append(o.put("email", p["email"]))
    if keep(rng, 0.5):
        contact.append("www." + p["domain"])
    rng.shuffle(contact)
    return "\n".join(lines + contact), o.values


def chat_intro(rng: random.Random, p: Person) -> Rendered:
    o = Out()
    text = f"Hi, this is {o.put('name', p['name'])}"
    if keep(rng, 0.8):
        text += f" from {o.put('company', p['company'])}"
    text += f", getting in touch {rng.choice(REASONS)}."
    if keep(rng, 0.5):
        text += f" You can call me back on {o.put('phone', p['phone'])}."
    else:
        text += f" Best to reach me at {o.put('email', p['email'])}."
    return text, o.values


def casual_text(rng: random.Random, p: Person) -> Rendered:
    o = Out()
    who = o.put("name", p["first"])
    place = f" from {o.put('company', p['company'])}" if keep(rng, 0.7) else ""
    opener = rng.choice(["hey, it's", "hi it's", "hey! this is", "morning, it's"])
    ask = rng.choice(["text me on", "ring me at", "my number is", "call me on"])
    about = rng.choice(CASUAL_REASONS)
    return f"{opener} {who}{place}, {about}. {ask} {o.put('phone', p['phone'])}", o.values


def intro_email(rng: random.Random, p: Person) -> Rendered:
    o = Out()
    greeting = rng.choice(["Hello", "Dear", "Hi"]) + " " + rng.choice(FIRST) + ","
    text = (
        f"{greeting} my name is {o.put('name', p['name'])} and I'm the "
        f"{o.put('title', p['title'])} at {o.put('company', p['company'])}. "
        f"I'm writing {rng.choice(REASONS)}."
    )
    reach = []
    if keep(rng, 0.8):
        reach.append(o.put("email", p["email"]))
    if keep(rng, 0.6) or not reach:
        reach.append(o.put("phone", p["phone"]))
    return f"{text} You can reach me at {' or '.join(reach)}.", o.values


def web_form(rng: random.Random, p: Person) -> Rendered:
    o = Out()
    email = p["personal_email"] if keep(rng, 0.4) else p["email"]
    phone = o.put("phone", p["phone"]) if keep(rng, 0.6) else ""
    company = o.put("company", p["company"]) if keep(rng, 0.6) else ""
    lines = [
        f"Name: {o.put('name', p['name'])}",
        f"Email: {o.put('email', email)}",
        f"Phone: {phone}".rstrip(),
        f"Company: {company}".rstrip(),
        f"Message: Hello, I'm getting in touch {rng.choice(REASONS)}.",
    ]
    return "\n".join(lines), o.values


def voicemail(rng: random.Random, p: Person) -> Rendered:
    o = Out()
    secs = rng.randint(9, 58)
    text = f"Voicemail from {o.put('phone', p['phone'])} (0:{secs:02d}): Hi, this is "
    text += o.put("name", p["name"] if keep(rng, 0.7) else p["first"])
    if keep(rng, 0.75):
        text += f" calling from {o.put('company', p['company'])}"
    return f"{text}, {rng.choice(REASONS)}. Please give me a call back.", o.values


def forwarded(rng: random.Random, p: Person) -> Rendered:
    o = Out()
    name, email = o.put("name", p["name"]), o.put("email", p["email"])
    lines = [
        "---------- Forwarded message ---------",
        f"From: {name} <{email}>",
        "Subject: " + rng.choice(["Re: ", "Fwd: ", ""]) + rng.choice(SUBJECTS),
        "",
        rng.choice(BODIES),
        "",
        p["first"],
    ]
    if keep(rng, 0.5):
        lines.append(o.put("title", p["title"]) + ", " + o.put("company", p["company"]))
    return "\n".join(lines), o.values


def profile_bio(rng: random.Random, p: Person) -> Rendered:
    o = Out()
    parts = [
        o.put("name", p["name"]),
        f"{o.put('title', p['title'])} at {o.put('company', p['company'])}",
        rng.choice(CITIES),
    ]
    if keep(rng, 0.5):
        parts.append(o.put("email", p["email"]))
    return " · ".join(parts), o.values


def name_badge(rng: random.Random, p: Person) -> Rendered:
    o = Out()
    lines = [
        rng.choice(["HELLO my name is", "VISITOR", "SPEAKER", "ATTENDEE"]),
        o.put("name", p["name"]),
    ]
    if keep(rng, 0.7):
        lines.append(o.put("title", p["title"]))
    lines.append(o.put("company", p["company"]))
    return "\n".join(lines), o.values


def meeting_note(rng: random.Random, p: Person) -> Rendered:
    o = Out()
    text = (
        f"Met {o.put('name', p['name'])} ({o.put('title', p['title'])}, "
        f"{o.put('company', p['company'])}) at {rng.choice(EVENTS)}."
    )
    extras = []
    if keep(rng, 0.7):
        extras.append(f"email {o.put('email', p['email'])}")
    if keep(rng, 0.6):
        extras.append(f"cell {o.put('phone', p['phone'])}")
    if extras:
        text += " Follow up: " + ", ".join(extras) + "."
    return text, o.values


def vcard(rng: random.Random, p: Person) -> Rendered:
    o = Out()
    lines = ["BEGIN:VCARD", "VERSION:3.0", f"FN:{o.put('name', p['name'])}"]
    if keep(rng, 0.85):
        lines.append(f"ORG:{o.put('company', p['company'])}")
    if keep(rng, 0.75):
        lines.append(f"TITLE:{o.put('title', p['title'])}")
    if keep(rng, 0.8):
        lines.append(f"TEL;TYPE=work:{o.put('phone', p['phone'])}")
    lines += [f"EMAIL:{o.put('email', p['email'])}", "END:VCARD"]
    return "\n".join(lines), o.values


def sms_signoff(rng: random.Random, p: Person) -> Rendered:
    o = Out()
    body = rng.choice(
        [
            "running 10 min late, sorry",
            "parcel is at the front desk",
            "can we push to 3pm?",
            "got your message, will call later",
            "invoice paid",
        ]
    )
    sign = rng.choice(["thx", "cheers", "ta", "thanks"])
    stop = " " if body.endswith("?") else ". "
    return f"{body}{stop}{sign}, {o.put('name', p['first'])} {o.put('phone', p['phone'])}", o.values


def out_of_office(rng: random.Random, p: Person) -> Rendered:
    o = Out()
    day = rng.choice(["Monday 4 March", "14 August", "the 2nd of January", "Tuesday", "next week"])
    text = f"I'm out of the office until {day} with limited access to email."
    if keep(rng, 0.7):
        text += f" For anything urgent, call my mobile on {o.put('phone', p['phone'])}."
    text += f"\n\n{o.put('name', p['name'])}"
    if keep(rng, 0.8):
        text += f"\n{o.put('title', p['title'])}"
    text += f"\n{o.put('company', p['company'])}"
    return text, o.values


def job_application(rng: random.Random, p: Person) -> Rendered:
    o = Out()
    role = rng.choice(
        [
            "the junior designer role",
            "the warehouse supervisor opening",
            "your summer internship",
            "the part-time barista position",
        ]
    )
    text = f"Dear hiring team, I'd like to apply for {role}. My CV is attached."
    if keep(rng, 0.5):
        text += f" I'm currently {o.put('title', p['title'])} at {o.put('company', p['company'])}."
    contact = [o.put("email", p["personal_email"])]
    if keep(rng, 0.6):
        contact.append(o.put("phone", p["phone"]))
    text += f"\n\n{o.put('name', p['name'])}\n" + "\n".join(contact)
    return text, o.values


def company_contact(rng: random.Random, p: Person) -> Rendered:
    o = Out()
    what = rng.choice(["bookings", "quotes", "general enquiries", "anything else"])
    text = f"For {what}, contact {o.put('company', p['company'])}"
    options = [f"on {o.put('phone', p['phone'])}"] if keep(rng, 0.7) else []
    if keep(rng, 0.7) or not options:
        options.append(f"at {o.put('email', p['mailbox'])}")
    return text + " " + " or ".join(options) + ".", o.values


def no_contact(rng: random.Random, p: Person) -> Rendered:
    return rng.choice(QUESTIONS), dict.fromkeys(FIELDS)


TEMPLATES: list[tuple[Callable[[random.Random, Person], Rendered], int]] = [
    (signature, 14),
    (one_line_signature, 8),
    (business_card, 8),
    (chat_intro, 8),
    (casual_text, 6),
    (intro_email, 8),
    (web_form, 7),
    (voicemail, 6),
    (forwarded, 6),
    (profile_bio, 5),
    (name_badge, 4),
    (meeting_note, 6),
    (vcard, 5),
    (sms_signoff, 4),
    (out_of_office, 5),
    (job_application, 5),
    (company_contact, 3),
    (no_contact, 3),
]


def check(text: str, output: dict[str, str | None], validator: Draft202012Validator) -> None:
    errors = [e.message for e in validator.iter_errors(output)]
    if errors:
        raise ValueError(f"invalid output {output}: {errors}")
    for field, value in output.items():
        if value is not None and value not in text:
            raise ValueError(f"{field}={value!r} does not occur in {text!r}")
    if len(text.split()) > MAX_WORDS:
        raise ValueError(f"over {MAX_WORDS} words: {text!r}")


def generate(
    rng: random.Random, n: int, seen: frozenset[str] = frozenset()
) -> dict[str, dict[str, str | None]]:
    """``n`` checked examples with distinct texts, none of them in ``seen``."""
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))["output_schema"]
    validator = Draft202012Validator(schema, format_checker=FormatChecker())
    funcs, weights = zip(*TEMPLATES, strict=True)
    examples: dict[str, dict[str, str | None]] = {}
    while len(examples) < n:
        template = rng.choices(funcs, weights=weights)[0]
        text, output = template(rng, make_person(rng))
        check(text, output, validator)
        if text not in seen:
            examples.setdefault(text, output)
    return examples


def build() -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """The train and test splits, the same on every run."""
    rng = random.Random(SEED)
    examples = generate(rng, N_TRAIN + N_TEST)
    rows: list[dict[str, object]] = [{"input": t, "output": o} for t, o in examples.items()]
    rng.shuffle(rows)
    return rows[:N_TRAIN], rows[N_TRAIN:]


def traffic(seen: frozenset[str]) -> list[dict[str, object]]:
    """Requests for replaying as live traffic, with their expected answers (another seed)."""
    examples = generate(random.Random(SEED + 1), N_TRAFFIC, seen)
    return [{"input": t, "output": o} for t, o in examples.items()]


def write(path: Path, rows: list[dict[str, object]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    train, test = build()
    replayed = traffic(frozenset(str(row["input"]) for row in train + test))
    write(TRAIN, train)
    write(TEST, test)
    write(TRAFFIC, replayed)
    print(
        f"wrote {len(train)} rows to {TRAIN.name}, {len(test)} to {TEST.name} and "
        f"{len(replayed)} to {TRAFFIC.name}"
    )


if __name__ == "__main__":
    main()
