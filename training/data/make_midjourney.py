"""Build the midjourney-prompt dataset: short image ideas and the prompt each one implies.

Each example starts from parts drawn from fixed lists: what the image is for (a phone
wallpaper, a book cover, an app icon...), a subject, sometimes a setting and a time of day,
sometimes a look ("realistic photo", "watercolor", "dreamy"), a mood, a wish for variety and a
"no people". A phrasing writes them as a user's short request. The expected output follows the
task's instructions (``schemas/midjourney-prompt.json``) by fixed rules, so the same request
always gets the same answer:

- ``prompt``: the subject (with its setting and time, as written), then the medium (from the
  look, else from what the image is for), the lighting (from the time of day, else from the
  medium) and the mood, joined by commas;
- ``aspect_ratio``: 9:16 for phone wallpapers, 16:9 for wide scenes and banners, 2:3 for
  portraits, posters and covers, 4:5 for social posts, 1:1 for icons, stickers and patterns;
- ``stylize``: 50 for photographs, 100 for icons and patterns, 750 for dreamy or surreal
  looks, else 250; ``chaos``: 0, 30 when the user asks for a few different takes, 80 for wild
  or surprising ones;
- ``negative``: what the image is for says what to leave out (text everywhere; watermarks on
  photographs; photorealism on icons), plus ``people`` when the user says so;
- ``style``: ``raw`` for photographs, else ``default``.

The script checks every output against the task's output schema, drops duplicate requests,
shuffles with a fixed seed and splits 200 / 50.

    python training/data/make_midjourney.py     # rewrites the two .jsonl files next to it
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from jsonschema import Draft202012Validator, FormatChecker

SEED = 20261201
N_TRAIN = 200
N_TEST = 50
HERE = Path(__file__).resolve().parent
SCHEMA = HERE.parent.parent / "schemas" / "midjourney-prompt.json"
TRAIN = HERE / "midjourney-prompt.train.jsonl"
TEST = HERE / "midjourney-prompt.test.jsonl"


@dataclass(frozen=True)
class Use:
    phrases: tuple[str, ...]  # how users ask for it; {idea} is the subject and the rest
    aspect_ratio: str
    medium: str  # when no look is asked for
    negative: tuple[str, ...]
    icon: bool = False  # icons and patterns: flat, no lighting, stylize 100


USES = [
    Use(
        ("phone wallpaper of {idea}", "a phone wallpaper: {idea}", "{idea}, as a phone wallpaper"),
        "9:16",
        "digital painting",
        ("text",),
    ),
    Use(
        ("desktop wallpaper of {idea}", "{idea}, wide desktop background"),
        "16:9",
        "digital painting",
        ("text",),
    ),
    Use(
        ("website banner showing {idea}", "hero banner for our site: {idea}"),
        "16:9",
        "digital illustration",
        ("text", "logo"),
    ),
    Use(
        ("book cover with {idea}", "cover art for a novel: {idea}"),
        "2:3",
        "book cover painting",
        ("text",),
    ),
    Use(("poster of {idea}", "a poster: {idea}"), "2:3", "poster art", ("text",)),
    Use(
        ("instagram post of {idea}", "{idea} for an instagram post"),
        "4:5",
        "digital illustration",
        ("text",),
    ),
    Use(
        ("app icon of {idea}", "an icon: {idea}"),
        "1:1",
        "flat vector icon",
        ("text", "photorealism"),
        icon=True,
    ),
    Use(
        ("sticker of {idea}", "{idea} as a sticker"),
        "1:1",
        "die-cut sticker illustration",
        ("text", "background"),
        icon=True,
    ),
    Use(
        ("seamless pattern of {idea}", "{idea}, repeating pattern"),
        "1:1",
        "seamless repeating pattern",
        ("text",),
        icon=True,
    ),
]
SUBJECTS = [
    "a red fox",
    "an old lighthouse",
    "a tiny robot gardener",
    "a mountain cabin",
    "a koi pond",
    "a vintage bicycle",
    "a sleeping cat",
    "a steam train",
    "a hot air balloon",
    "a treehouse",
    "a paper boat",
    "a snow leopard",
    "a cup of coffee",
    "an astronaut",
    "a sunflower field",
    "a sailing ship",
]
SETTINGS = [
    "in a snowy forest",
    "on a rocky cliff",
    "in a night market",
    "by a quiet lake",
    "in a busy city street",
    "on the moon",
    "in an overgrown greenhouse",
    "in the desert",
]
TIMES = {  # as written -> the lighting it implies
    "at dusk": "warm dusk light",
    "at night": "moody night lighting",
    "at sunrise": "soft golden sunrise light",
    "in the rain": "diffused rainy light",
}
LOOKS = {  # as written -> medium
    "realistic photo": "photograph, 35mm lens, sharp focus",
    "watercolor": "watercolor painting",
    "oil painting": "oil painting, visible brushstrokes",
    "pixel art": "pixel art",
    "dreamy": "dreamy surreal digital art",
    "surreal": "surreal digital art",
}
PHOTO = "realistic photo"
ARTISTIC = {"dreamy", "surreal"}
DEFAULT_LIGHT = {True: "clean flat colors", False: "soft diffused light"}
PHOTO_LIGHT = "natural light"
MOODS = ["cozy", "eerie", "peaceful", "epic", "playful", "melancholic"]
DEFAULT_MOOD = "calm"
VARIETY = {"": 0, "give me a few different takes": 30, "surprise me, go wild": 80}


def idea(rng: random.Random) -> tuple[str, str | None]:
    """The subject as the user writes it, and the time of day it names (if any)."""
    words = [rng.choice(SUBJECTS)]
    if rng.random() < 0.6:
        words.append(rng.choice(SETTINGS))
    time = rng.choice(list(TIMES)) if rng.random() < 0.5 else None
    if time:
        words.append(time)
    return " ".join(words), time


def render(rng: random.Random) -> tuple[str, dict[str, object]]:
    use = rng.choice(USES)
    subject, time = idea(rng)
    look = rng.choice(list(LOOKS)) if rng.random() < 0.5 else None
    if use.icon and look in (PHOTO, "oil painting"):
        look = None  # a photographic icon is not a thing users ask for here
    mood = rng.choice(MOODS) if rng.random() < 0.5 else None
    variety = rng.choice(list(VARIETY)) if rng.random() < 0.4 else ""
    no_people = rng.random() < 0.25

    request = rng.choice(use.phrases).format(idea=subject)
    extras = []
    if look:
        extras.append(look if look == PHOTO else f"{look} style")
    if mood:
        extras.append(f"{mood} vibe")
    rng.shuffle(extras)
    if extras:
        request += ", " + ", ".join(extras)
    if no_people:
        request += ", no people"
    if variety:
        request += ". " + variety[0].upper() + variety[1:]

    photo = look == PHOTO
    medium = LOOKS[look] if look else use.medium
    light = TIMES[time] if time else PHOTO_LIGHT if photo else DEFAULT_LIGHT[use.icon and not look]
    prompt = ", ".join([subject, medium, light, f"{mood or DEFAULT_MOOD} mood"])
    if photo:
        stylize = 50
    elif look in ARTISTIC:
        stylize = 750
    elif use.icon:
        stylize = 100
    else:
        stylize = 250
    negative = list(use.negative)
    if photo:
        negative.append("watermark")
    if no_people:
        negative.append("people")
    output = {
        "prompt": prompt,
        "aspect_ratio": use.aspect_ratio,
        "stylize": stylize,
        "chaos": VARIETY[variety],
        "negative": negative,
        "style": "raw" if photo else "default",
    }
    return request, output


def build() -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """The train and test splits, the same on every run."""
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))["output_schema"]
    validator = Draft202012Validator(schema, format_checker=FormatChecker())
    shipped = {e["input"] for e in json.loads(SCHEMA.read_text(encoding="utf-8"))["examples"]}
    rng = random.Random(SEED)
    examples: dict[str, dict[str, object]] = {}
    while len(examples) < N_TRAIN + N_TEST:
        text, output = render(rng)
        errors = [e.message for e in validator.iter_errors(output)]
        if errors:
            raise ValueError(f"invalid output {output}: {errors}")
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
