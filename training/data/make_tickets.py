"""Build the ticket-triage dataset: synthetic support messages from known scenarios.

Each example starts from a scenario: a kind of support message with its label, urgency,
confidence and a one-line summary template (``schemas/ticket-triage.json`` says what the
labels mean). The scenario's phrasings render the same facts (amounts, months, features,
devices...) into a customer's message, wrapped in an optional greeting and sign-off, sometimes
in lower case. Expected outputs follow the task's instructions by construction:

- ``label`` is the scenario's; ``confidence`` is 0.95 where one label clearly fits, lower
  (0.85, 0.75) where another label could fit too (asking for a discount, "is there a way...");
- ``urgency`` is ``high`` when the customer is blocked, losing money or at a security risk,
  ``low`` for ideas and general questions, otherwise ``normal``; a blocker sentence ("our
  whole team is blocked") added to a ``normal`` message makes it ``high``;
- ``summary`` fills the scenario's template with the facts the message states.

Labels take turns (about as many rows of each); within a label, scenarios are drawn by weight.
The script checks every output against the task's output schema, drops duplicate texts,
shuffles with a fixed seed and splits 200 / 50.

    python training/data/make_tickets.py        # rewrites the two .jsonl files next to it
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jsonschema import Draft202012Validator, FormatChecker

SEED = 20261130
N_TRAIN = 200
N_TEST = 50
MAX_WORDS = 60
HERE = Path(__file__).resolve().parent
SCHEMA = HERE.parent.parent / "schemas" / "ticket-triage.json"
TRAIN = HERE / "ticket-triage.train.jsonl"
TEST = HERE / "ticket-triage.test.jsonl"

Facts = dict[str, str]

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "September"]
PLANS = ["Starter", "Team", "Pro", "Business"]
AMOUNTS = ["$12", "$19", "$29", "$49", "$79", "$99", "$149"]
FEATURES = [
    "CSV export",
    "calendar sync",
    "search bar",
    "invoice page",
    "file upload",
    "notifications page",
    "reports tab",
    "comment editor",
]
BREAKS = [
    ("does nothing when I click it", "does nothing when clicked"),
    ("shows an error", "shows an error"),
    ("is stuck loading forever", "is stuck loading"),
    ("returns an empty page", "returns an empty page"),
]
PAGES = ["the dashboard", "the billing page", "project settings", "the team page", "reports"]
CODES = ["500", "502", "404", "403"]
DEVICES = ["iPhone", "Android", "iPad", "Windows", "Mac"]
INTEGRATIONS = ["Slack", "Salesforce", "Google Drive", "HubSpot", "Zapier", "Jira"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
IDEAS = [  # (as a wish, as a noun)
    ("we could schedule reports to go out by email", "scheduled email reports"),
    ("there was a dark mode", "a dark mode"),
    ("we could export boards to PDF", "PDF export of boards"),
    ("the app worked offline", "an offline mode"),
    ("we could add custom fields to tasks", "custom fields on tasks"),
    ("the calendar had a week view", "a week view in the calendar"),
    ("we could set due-date reminders", "due-date reminders"),
    ("guests could comment without an account", "guest comments without an account"),
]
CAPABILITIES = [
    "bulk edit tags",
    "merge duplicate contacts",
    "copy a project with its tasks",
    "set a default time zone per team",
    "lock a report after approval",
]
HOW_TOS = [
    "add a second admin to our workspace",
    "import contacts from a spreadsheet",
    "change the language of the interface",
    "share a report with a client",
    "set up a recurring invoice",
    "connect my Google calendar",
    "archive an old project",
    "change my notification settings",
]
FINDABLE = ["the API key", "the audit log", "our invoices", "the data export", "the SSO settings"]
CHANGED = ["email address", "password", "phone number", "recovery email"]
PEOPLE = ["Maria Lopez", "Tom Becker", "Priya Nair", "Kenji Sato", "Anna Novak"]
CITIES = ["Singapore", "Berlin", "Toronto", "Sydney", "Madrid", "Nairobi"]
AGENCIES = ["design", "marketing", "consulting", "software"]
ROLES = ["designer", "support engineer", "data analyst", "product manager"]
OUTLETS = ["TechDaily", "the Business Review", "StartupWeek", "Cloud Weekly"]
PRAISED = ["the new editor", "the mobile app", "the latest update", "your support team"]
DISCOUNTS = ["nonprofit", "annual billing", "student", "startup"]
VATS = ["DE123456789", "FR40303265045", "NL859048186B01", "IE6388047V"]

GREETINGS = ["", "", "", "Hi,", "Hello,", "Hi team,", "Hey there,", "Good morning,"]
SIGNOFFS = ["", "", "", "Thanks!", "Thanks, Maria", "Regards, Tom", "Cheers, Priya", "Best, Ken"]
BLOCKERS = {
    "billing": ["This needs fixing today.", "Our finance team is waiting on this right now."],
    "bug": [
        "Our whole team is blocked.",
        "We're losing sales while this is broken.",
        "I have a client demo in an hour!",
        "Nobody here can work until it's fixed.",
    ],
    "account": [
        "I need access today, it's blocking my work.",
        "Please hurry, this is blocking us.",
    ],
}


@dataclass(frozen=True)
class Scenario:
    label: str
    urgency: str  # before any blocker sentence
    confidence: float
    summary: str
    phrasings: tuple[str, ...]
    facts: Callable[[random.Random], Facts]
    weight: int = 3


def pick(rng: random.Random, **choices: list[str]) -> Facts:
    return {name: rng.choice(values) for name, values in choices.items()}


def breaks(rng: random.Random) -> Facts:
    feature = rng.choice(FEATURES)
    symptom, summary = rng.choice(BREAKS)
    return {
        "feature": feature,
        "Feature": feature[0].upper() + feature[1:],
        "breaks": symptom,
        "broken": summary,
    }


def idea(rng: random.Random) -> Facts:
    wish, noun = rng.choice(IDEAS)
    return {"wish": wish, "idea": noun}


def price_change(rng: random.Random) -> Facts:
    old, new = sorted(rng.sample(AMOUNTS, 2), key=lambda a: int(a[1:]))
    return {"plan": rng.choice(PLANS), "old": old, "amount": new}


def page_fact(rng: random.Random) -> Facts:
    page = rng.choice(PAGES)
    return {"page": page, "Page": page[0].upper() + page[1:], "n": str(rng.choice([10, 20, 30]))}


SCENARIOS = [
    # billing
    Scenario(
        "billing",
        "high",
        0.95,
        "Charged twice ({amount}) in {month}; wants one refunded.",
        (
            "I was charged twice in {month}, two {amount} payments on my card. Please refund one.",
            "You billed me twice for {month} ({amount} each). Can you refund the extra charge?",
            "Two identical {amount} charges for {month} on our card statement."
            " One needs to be refunded.",
        ),
        lambda r: pick(r, amount=AMOUNTS, month=MONTHS),
        weight=4,
    ),
    Scenario(
        "billing",
        "high",
        0.95,
        "Charged {amount} after cancelling the {plan} plan.",
        (
            "I cancelled our {plan} plan last month but you still charged me {amount}.",
            "Why was I charged {amount}? I cancelled the {plan} subscription weeks ago.",
            "Still being billed {amount} for the {plan} plan even though we cancelled it.",
        ),
        lambda r: pick(r, amount=AMOUNTS, plan=PLANS),
    ),
    Scenario(
        "billing",
        "normal",
        0.95,
        "Needs a {month} invoice with VAT number {vat}.",
        (
            "Please send me an invoice for {month} showing our VAT number {vat}.",
            "Could you reissue the {month} invoice with our VAT number ({vat}) on it?",
            "Our accountant needs the {month} invoice with VAT number {vat}. Can you send it?",
        ),
        lambda r: pick(r, month=MONTHS, vat=VATS),
    ),
    Scenario(
        "billing",
        "normal",
        0.95,
        "The {plan} plan went from {old} to {amount} without notice.",
        (
            "Why did the {plan} plan go up from {old} to {amount}?"
            " Nobody told us about a price change.",
            "Our {plan} plan now costs {amount} instead of {old}. When was this announced?",
        ),
        price_change,
    ),
    Scenario(
        "billing",
        "low",
        0.85,
        "Asks about {discount} pricing for the {plan} plan.",
        (
            "Do you offer {discount} pricing on the {plan} plan?",
            "Is there a {discount} discount for the {plan} plan? We'd like to sign up.",
        ),
        lambda r: pick(r, discount=DISCOUNTS, plan=PLANS),
    ),
    # bug
    Scenario(
        "bug",
        "normal",
        0.95,
        "{Feature} {broken} since the latest update.",
        (
            "The {feature} {breaks} since yesterday's update.",
            "Since your last update the {feature} {breaks}. Tried two browsers, same thing.",
            "hey, the {feature} {breaks} ever since the update this week",
        ),
        breaks,
        weight=5,
    ),
    Scenario(
        "bug",
        "normal",
        0.95,
        "{code} error when opening {page}.",
        (
            "I get a {code} error every time I open {page}.",
            "Opening {page} gives me a {code} error page.",
            "{Page} keeps failing with error {code}.",
        ),
        lambda r: {**page_fact(r), "code": r.choice(CODES)},
        weight=4,
    ),
    Scenario(
        "bug",
        "normal",
        0.95,
        "{device} app crashes when opening {page}.",
        (
            "The {device} app crashes every time I open {page}.",
            "Your {device} app closes itself as soon as I tap on {page}.",
        ),
        lambda r: pick(r, device=DEVICES, page=PAGES),
    ),
    Scenario(
        "bug",
        "normal",
        0.9,
        "{integration} sync stopped working on {day}.",
        (
            "Our {integration} sync stopped working on {day}; nothing new has come through since.",
            "Nothing has synced from {integration} since {day}. The connection says it is active.",
        ),
        lambda r: pick(r, integration=INTEGRATIONS, day=DAYS),
    ),
    Scenario(
        "bug",
        "normal",
        0.85,
        "{Page} takes over {n} seconds to load.",
        (
            "{Page} takes over {n} seconds to load for everyone on our team.",
            "Loading {page} takes more than {n} seconds lately, it used to be instant.",
        ),
        page_fact,
    ),
    Scenario(
        "bug",
        "high",
        0.95,
        "{Page} shows a blank screen for the whole company.",
        (
            "Nobody in our company can use {page}, it just shows a blank screen.",
            "{Page} is a blank white screen for all of us since this morning.",
        ),
        page_fact,
    ),
    # feature_request
    Scenario(
        "feature_request",
        "low",
        0.95,
        "Wants {idea}.",
        (
            "It would be great if {wish}.",
            "Feature idea: it would help a lot if {wish}.",
            "Would love it if {wish}!",
        ),
        idea,
        weight=5,
    ),
    Scenario(
        "feature_request",
        "low",
        0.95,
        "Asks for a {integration} integration.",
        (
            "Any plans to support {integration}? We'd move our whole team over if you did.",
            "Please add an integration with {integration}, we use it every day.",
        ),
        lambda r: pick(r, integration=INTEGRATIONS),
    ),
    Scenario(
        "feature_request",
        "low",
        0.9,
        "Wants to be able to {capability}.",
        (
            "Could you let us {capability}? Right now we do it by hand.",
            "Please make it possible to {capability}. It would save us hours.",
        ),
        lambda r: pick(r, capability=CAPABILITIES),
    ),
    # account
    Scenario(
        "account",
        "high",
        0.95,
        "Cannot log in; the password reset email never arrives.",
        (
            "I can't log in and the password reset email never arrives.",
            "Locked out of my account. Requested a password reset three times, no email.",
            "cant log in, reset password email doesnt come",
        ),
        lambda r: {},
        weight=2,
    ),
    Scenario(
        "account",
        "high",
        0.95,
        "Account {changed} changed by someone else; possible takeover.",
        (
            "Someone changed the {changed} on my account and it wasn't me."
            " I think I've been hacked.",
            "The {changed} on my account was changed last night, not by me. Please lock it.",
        ),
        lambda r: pick(r, changed=CHANGED),
    ),
    Scenario(
        "account",
        "high",
        0.95,
        "Lost phone; cannot sign in without the two-factor code.",
        (
            "I lost my phone and can't get the two-factor code to sign in.",
            "New phone, and my authenticator codes are gone, so I can't sign in.",
        ),
        lambda r: {},
        weight=2,
    ),
    Scenario(
        "account",
        "normal",
        0.9,
        "Wants to delete the account and all its data.",
        (
            "We're closing down at the end of the month."
            " How do we delete our account and all data?",
            "Please delete my account and everything stored in it.",
        ),
        lambda r: {},
        weight=2,
    ),
    Scenario(
        "account",
        "normal",
        0.9,
        "Wants workspace ownership moved to {person}.",
        (
            "Please transfer ownership of our workspace to {person}, who is taking over from me.",
            "I'm leaving the company. Can you make {person} the owner of our workspace?",
        ),
        lambda r: pick(r, person=PEOPLE),
    ),
    # how_to
    Scenario(
        "how_to",
        "low",
        0.95,
        "Asks how to {task}.",
        (
            "How do I {task}?",
            "Quick question: how can I {task}?",
            "what's the way to {task}? couldn't find it in the docs",
        ),
        lambda r: pick(r, task=HOW_TOS),
        weight=5,
    ),
    Scenario(
        "how_to",
        "low",
        0.75,
        "Asks whether there is a way to {task}.",
        (
            "Is there a way to {task}, or is that not possible?",
            "Can I {task} somehow, or do I have to ask you?",
        ),
        lambda r: pick(r, task=HOW_TOS),
    ),
    Scenario(
        "how_to",
        "low",
        0.95,
        "Asks where to find {thing}.",
        (
            "Where can I find {thing}?",
            "I'm looking for {thing} in the settings but can't see it. Where is it?",
        ),
        lambda r: pick(r, thing=FINDABLE),
    ),
    # other
    Scenario(
        "other",
        "low",
        0.95,
        "Praise for {praised}.",
        (
            "Just wanted to say {praised} is fantastic. Great job, team!",
            "Big thanks, {praised} is excellent. Keep it up.",
        ),
        lambda r: pick(r, praised=PRAISED),
    ),
    Scenario(
        "other",
        "low",
        0.85,
        "Asks whether there is an office in {city}.",
        (
            "Do you have an office in {city}? We'd like to meet your team in person.",
            "Is anyone from your team based in {city}? We'd love to meet.",
        ),
        lambda r: pick(r, city=CITIES),
    ),
    Scenario(
        "other",
        "low",
        0.85,
        "Proposes a partnership from a {agency} agency.",
        (
            "We're a {agency} agency and would like to talk about a partnership.",
            "Hello from a {agency} agency: who should we talk to about partnering with you?",
        ),
        lambda r: pick(r, agency=AGENCIES),
    ),
    Scenario(
        "other",
        "low",
        0.9,
        "Asks about {role} jobs.",
        (
            "Are you hiring a {role}? I'd love to join your team.",
            "Do you have openings for a {role}? Where can I apply?",
        ),
        lambda r: pick(r, role=ROLES),
    ),
    Scenario(
        "other",
        "low",
        0.9,
        "Journalist from {outlet} asks for an interview.",
        (
            "I'm a journalist at {outlet}. Could someone from your team answer a few questions?",
            "Writing a piece for {outlet} and would like to interview your founder.",
        ),
        lambda r: pick(r, outlet=OUTLETS),
    ),
]


def render(rng: random.Random, scenario: Scenario) -> tuple[str, dict[str, object]]:
    facts = scenario.facts(rng)
    body = rng.choice(scenario.phrasings).format(**facts)
    urgency = scenario.urgency
    if urgency == "normal" and scenario.label in BLOCKERS and rng.random() < 0.35:
        body += " " + rng.choice(BLOCKERS[scenario.label])
        urgency = "high"
    parts = [rng.choice(GREETINGS), body, rng.choice(SIGNOFFS)]
    text = " ".join(part for part in parts if part)
    if rng.random() < 0.1:
        text = text.lower()
    output = {
        "label": scenario.label,
        "urgency": urgency,
        "confidence": scenario.confidence,
        "summary": scenario.summary.format(**facts),
    }
    return text, output


def check(text: str, output: dict[str, object], validator: Draft202012Validator) -> None:
    errors = [e.message for e in validator.iter_errors(output)]
    if errors:
        raise ValueError(f"invalid output {output}: {errors}")
    if len(text.split()) > MAX_WORDS:
        raise ValueError(f"over {MAX_WORDS} words: {text!r}")


def build() -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """The train and test splits, the same on every run."""
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))["output_schema"]
    validator = Draft202012Validator(schema, format_checker=FormatChecker())
    shipped = {e["input"] for e in json.loads(SCHEMA.read_text(encoding="utf-8"))["examples"]}
    rng = random.Random(SEED)
    labels = sorted({s.label for s in SCENARIOS})
    examples: dict[str, dict[str, object]] = {}
    while len(examples) < N_TRAIN + N_TEST:
        label = labels[len(examples) % len(labels)]  # as many of each label
        of_label = [s for s in SCENARIOS if s.label == label]
        scenario = rng.choices(of_label, weights=[s.weight for s in of_label])[0]
        text, output = render(rng, scenario)
        check(text, output, validator)
        if text not in shipped:  # the task file's own examples stay out of the data
            examples.setdefault(text, output)
    rows: list[dict[str, object]] = [{"input": t, "output": o} for t, o in examples.items()]
    rng.shuffle(rows)
    return rows[:N_TRAIN], rows[N_TRAIN:]


def write(path: Path, rows: list[dict[str, object]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    train, test = build()
    write(TRAIN, train)
    write(TEST, test)
    print(f"wrote {len(train)} rows to {TRAIN.name} and {len(test)} to {TEST.name}")


if __name__ == "__main__":
    main()
