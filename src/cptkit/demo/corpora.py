"""Four small corpora with clearly different distributions, for `cpt demo`.

* ``english``    -- generated English-like prose (stories, fables, letters, diaries, descriptions);
                    the "pretraining" distribution D0.
* ``code``       -- chunks of the Python standard library's own source code.
* ``arithmetic`` -- generated arithmetic word problems with step-by-step solutions.
* ``traces``     -- generated algorithm execution traces (sorting, GCD, search, ...), one per line.

Everything is built from material present on any machine that runs Python, deterministically from a
seed, in a few seconds, and nothing is written outside the output directory.
"""

from __future__ import annotations

import json
import os
import random
import re
import sysconfig
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ..fileio import write_text_atomic

SEPARATOR = "<|endoftext|>"

# name -> recipe source spec: file names are relative to the directory `write_corpora` wrote to.
CORPORA: dict[str, dict] = {
    "english": {"paths": ["english.txt"], "separator": SEPARATOR},
    "code": {"paths": ["code.jsonl"]},
    "arithmetic": {"paths": ["arithmetic.jsonl"], "template": "{question}\n{answer}"},
    "traces": {"paths": ["traces.txt"], "format": "lines"},
}

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}

CODE_CHUNK_CHARS = 4000
# At most this many chunks per stdlib file, so that a few huge modules cannot dominate the corpus.
CODE_CHUNKS_PER_FILE = 3
_CODE_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__"}


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------


def write_corpora(out_dir: Path, seed: int = 0, chars_per_corpus: int = 1_200_000) -> dict[str, Path]:
    """Writes english.txt, code.jsonl, arithmetic.jsonl and traces.txt into `out_dir`.

    Each corpus holds about `chars_per_corpus` characters of document text (as `read_documents`
    yields it). Files are written atomically. Returns corpus name -> file path.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    writers: dict[str, Callable[[random.Random, int], str]] = {
        "english": _english_file,
        "code": _code_file,
        "arithmetic": _arithmetic_file,
        "traces": _traces_file,
    }
    paths = {}
    for index, (name, build) in enumerate(writers.items()):
        # One generator per corpus so that changing one corpus' code leaves the others' bytes alone.
        rng = random.Random(f"{seed}:{index}:{name}")
        path = out_dir / CORPORA[name]["paths"][0]
        write_text_atomic(path, build(rng, chars_per_corpus))
        paths[name] = path
    return paths


def read_documents(out_dir: Path, name: str) -> Iterator[str]:
    """Yields the documents of corpus `name` from `out_dir`, parsed as its `CORPORA` spec says."""
    spec = CORPORA[name]
    for rel in spec["paths"]:
        text = (Path(out_dir) / rel).read_text(encoding="utf-8")
        if "separator" in spec:
            docs = (doc.strip() for doc in text.split(spec["separator"]))
        elif spec.get("format") == "lines":
            docs = (line.strip() for line in text.split("\n"))
        else:
            docs = (_render_json(line, spec.get("template")) for line in text.split("\n") if line.strip())
        yield from (doc for doc in docs if doc)


def iter_texts(out_dir: Path) -> Iterator[str]:
    """Yields every document text of the four corpora (for tokenizer training)."""
    for name in CORPORA:
        yield from read_documents(out_dir, name)


def train_tokenizer(texts: Iterable[str], out_dir: Path, vocab_size: int = 2048) -> Path:
    """Trains a byte-level BPE on `texts` and saves it as a Hugging Face tokenizer folder `out_dir`.

    The tokenizer adds no special tokens when encoding; bos/eos/unk/pad are "<s>", "</s>", "<unk>",
    "<pad>". Returns `out_dir`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        # Every byte is in the vocabulary, so any text round-trips and "<unk>" is never needed.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        # The default clean-up rewrites " ." to "." on decode, which would break round-trips.
        clean_up_tokenization_spaces=False,
        **SPECIAL_TOKENS,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(str(out_dir))
    return out_dir


# --------------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------------


def _render_json(line: str, template: str | None) -> str:
    """Turns one jsonl line into document text: `template` filled with its fields, or its "text"."""
    record = json.loads(line)
    return template.format(**record) if template else record["text"]


def _take(docs: Iterator, target_chars: int, size: Callable[[object], int]) -> list:
    """Collects items from `docs` until their total `size` reaches `target_chars`."""
    taken, total = [], 0
    for doc in docs:
        if total >= target_chars:
            break
        taken.append(doc)
        total += size(doc)
    return taken


def _jsonl(records: list[dict]) -> str:
    """One JSON object per line, keys in insertion order."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def _forever(make: Callable[[random.Random], object], rng: random.Random) -> Iterator:
    """Calls `make(rng)` endlessly."""
    while True:
        yield make(rng)


# --------------------------------------------------------------------------------------------------
# english: a small template grammar
# --------------------------------------------------------------------------------------------------

_WORDS: dict[str, list[str]] = {
    "she": "Anna Clara Ella Grace Iris Kate Maya Olive Rosa Tara Wendy Lucy Nora Alice Julia".split(),
    "he": "Ben Daniel Finn Hugo Jack Leo Noah Paul Sam Victor Oscar Tom Felix Henry Max".split(),
    "animal": "fox rabbit owl bear wolf deer mouse cat dog horse goat duck crow frog turtle badger "
    "squirrel hedgehog sparrow lion donkey goose otter beaver lamb".split(),
    "place": "forest village river meadow market garden library harbor castle valley hill farm bakery "
    "school station bridge island cottage mountain lake orchard square kitchen attic field".split(),
    "thing": "lantern basket map key letter book ribbon coin blanket kite bottle hat umbrella box "
    "feather stone shell candle clock bell boat cup drum flute scarf ring compass rope".split(),
    "food": "bread soup apples cheese honey pie carrots berries tea cake porridge pears biscuits "
    "plums milk".split(),
    # "adj" describes things and places, "mood" describes people and animals.
    "adj": "old small quiet bright strange golden dusty warm cold tiny huge wooden shiny hidden "
    "green silver noisy muddy soft narrow ancient empty crooked heavy".split(),
    "mood": "tired brave clever gentle curious happy lonely busy careful sleepy kind proud shy "
    "friendly hungry grumpy wise young".split(),
    "color": "red blue green yellow grey brown white black purple orange".split(),
    "feeling": "glad worried surprised calm proud sad excited nervous hopeful puzzled grateful "
    "cheerful".split(),
    "weather": "the rain fell softly | the wind blew from the north | the sun was warm | snow covered "
    "the roofs | a thick fog rolled in | the sky was clear | clouds gathered over the hills | "
    "a cold breeze moved the leaves".split(" | "),
    "time": "one morning | early one spring | late that evening | on a windy afternoon | at dawn | "
    "after supper | in the middle of winter | one summer night | before breakfast | "
    "long ago".split(" | "),
    "adverb": "slowly quickly quietly carefully happily suddenly gently proudly patiently loudly "
    "softly eagerly".split(),
    "walked": "walked wandered hurried ran climbed strolled rode sailed marched".split(),
    "found": "found noticed discovered saw spotted dropped carried mended painted hid "
    "borrowed".split(),
    "said": "said whispered asked shouted replied laughed called".split(),
    "weekday": "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split(),
    "moral": "slow and steady work wins in the end | a friend in need is a friend indeed | "
    "pride comes before a fall | kindness is never wasted | look before you leap | "
    "many hands make light work | honesty is the best policy | do not judge by "
    "appearances".split(" | "),
}

_WORDS["name"] = _WORDS["she"] + _WORDS["he"]

_STORY_OPENINGS = [
    "{time}, {hero} {walked} to the {place} with {his} {mood} {animal}.",
    "There was once a {mood} {animal} who lived near the {place}.",
    "{time}, {weather}, and {hero} could not sleep.",
    "{hero} had always wanted to visit the {adj} {place}.",
    "In a {adj} {place} lived {hero}, who kept a {color} {thing} by the door.",
]
_STORY_EVENTS = [
    "{He} {found} a {adj} {thing} under a {color} {thing2}.",
    "On the way {he} met a {mood} {animal} carrying a {thing}.",
    "{He} {walked} {adverb} past the {place2} and the {adj} {place3}.",
    "{friend} was waiting there with a basket of {food}.",
    "{weather}, so {he} stopped to rest by the {place2}.",
    "The {animal} looked at {him} and seemed {feeling}.",
    "{He} felt {feeling} and a little {feeling2}.",
    "\"Where are you going?\" {said} {friend}.",
    "\"I am looking for my {thing},\" {he} {said} {adverb}.",
    "\"Come and see the {adj} {thing}!\" {said} {friend}.",
    "They shared some {food} and talked about the {place2}.",
    "Nobody knew who had left the {thing} in the {place2}.",
    "{He} {found} {his} old {thing} and smiled.",
    "For a long time {he} listened to the {animal} in the {place2}.",
    "The {adj} {thing} began to glow, and {he} stepped back {adverb}.",
    "{friend} laughed and pointed at the {color} {animal}.",
]
_STORY_ENDINGS = [
    "When night came, {hero} went home {feeling} and tired.",
    "From that day on, {hero} visited the {place} every {weekday}.",
    "In the end, {hero} and {friend} became the best of friends.",
    "{hero} never forgot the {adj} {thing} of the {place}.",
    "And that is why the {animal} still sleeps by the {place}.",
]
_DESCRIPTION_LINES = [
    "The {place} was {adj} and {adj2}.",
    "Near the {place2} stood a {adj} {thing} painted {color}.",
    "Every {weekday} the {animals} gathered by the {place2}.",
    "{weather}, and the air smelled of {food}.",
    "People came from the {place2} to buy {food} and {food2}.",
    "A {adj} path led from the {place2} to the {place3}.",
    "At night you could hear the {animals} and the {adj} bell of the {place2}.",
    "Children played with a {color} {thing} in the {place2}.",
]


def _english_file(rng: random.Random, chars: int) -> str:
    """The english corpus: documents joined by "\\n<|endoftext|>\\n"."""
    docs = _take(_forever(_english_doc, rng), chars, len)
    return f"\n{SEPARATOR}\n".join(docs) + "\n"


def _english_doc(rng: random.Random) -> str:
    """One document of a random genre."""
    genre = rng.choice([_story, _story, _fable, _description, _letter, _diary])
    return genre(rng, _cast(rng))


def _cast(rng: random.Random) -> dict[str, str]:
    """Fixed slot values for one document: the hero, their pronouns, a friend and a home place."""
    he, his, him = rng.choice([("he", "his", "him"), ("she", "her", "her")])
    hero, friend = rng.choice(_WORDS[he]), rng.choice(_WORDS["name"])
    while friend == hero:
        friend = rng.choice(_WORDS["name"])
    return {"hero": hero, "friend": friend, "he": he, "his": his, "him": him,
            "He": he.capitalize(), "place": rng.choice(_WORDS["place"])}


def _fill(template: str, rng: random.Random, cast: dict[str, str]) -> str:
    """Fills `{slot}` with the cast's value or a random word; `{slot2}` draws another word."""
    def word(match: re.Match) -> str:
        key = match.group(1)
        if key in cast:
            return cast[key]
        if key == "animals":
            return _plural(rng.choice(_WORDS["animal"]))
        return rng.choice(_WORDS[key.rstrip("23")])

    text = re.sub(r"\{(\w+)\}", word, template)
    text = re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", text)  # "a owl" -> "an owl"
    return text[0].upper() + text[1:]


def _plural(noun: str) -> str:
    """The plural of an animal name."""
    irregular = {"mouse": "mice", "goose": "geese", "wolf": "wolves", "fox": "foxes"}
    return irregular.get(noun, noun + "s")


def _sentences(templates: list[str], count: int, rng: random.Random, cast: dict[str, str]) -> str:
    """`count` sentences from `templates` (all different), joined by spaces."""
    picked = [_fill(t, rng, cast) for t in rng.sample(templates, min(count, len(templates)))]
    return " ".join(picked)


def _story(rng: random.Random, cast: dict[str, str]) -> str:
    """Opening, one to three paragraphs of events, and an ending."""
    events = [_fill(t, rng, cast) for t in rng.sample(_STORY_EVENTS, rng.randint(3, 10))]
    cuts = sorted(rng.sample(range(1, len(events)), rng.randint(0, 2)))
    paragraphs = [_fill(rng.choice(_STORY_OPENINGS), rng, cast)]
    paragraphs += [" ".join(events[a:b]) for a, b in zip([0] + cuts, cuts + [len(events)])]
    paragraphs[-1] += " " + _fill(rng.choice(_STORY_ENDINGS), rng, cast)
    return "\n\n".join(paragraphs)


def _fable(rng: random.Random, cast: dict[str, str]) -> str:
    """A titled animal story with a moral."""
    first, second = rng.sample(_WORDS["animal"], 2)
    cast = {**cast, "hero": f"the {first}", "friend": f"the {second}", "animal": first}
    title = f"The {first.capitalize()} and the {second.capitalize()}"
    body = _sentences(_STORY_EVENTS, rng.randint(3, 6), rng, cast)
    return f"{title}\n\n{body}\n\nMoral: {_fill('{moral}.', rng, cast)}"


def _description(rng: random.Random, cast: dict[str, str]) -> str:
    """A paragraph describing a place."""
    return _sentences(_DESCRIPTION_LINES, rng.randint(3, 6), rng, cast)


def _letter(rng: random.Random, cast: dict[str, str]) -> str:
    """A short letter from the hero to the friend."""
    body = _sentences(_STORY_EVENTS + _DESCRIPTION_LINES, rng.randint(3, 5), rng, cast)
    wish = _fill("This week {weather2}. I hope you are {feeling} and well.", rng, cast)
    return f"Dear {cast['friend']},\n\n{body}\n\n{wish}\n\nYours, {cast['hero']}"


def _diary(rng: random.Random, cast: dict[str, str]) -> str:
    """A diary entry or two."""
    entries = []
    for day in rng.sample(_WORDS["weekday"], rng.randint(1, 2)):
        entries.append(f"{day}. " + _sentences(_STORY_EVENTS, rng.randint(2, 4), rng, cast))
    return "\n\n".join(entries)


# --------------------------------------------------------------------------------------------------
# code: the Python standard library's own source
# --------------------------------------------------------------------------------------------------


def _code_file(rng: random.Random, chars: int) -> str:
    """The code corpus: stdlib source chunks as {"text": ...} lines."""
    chunks = _take(_code_chunks(rng), chars, len)
    return _jsonl([{"text": chunk} for chunk in chunks])


def _stdlib_files() -> list[Path]:
    """The stdlib's .py files outside test/idlelib/site-packages folders, sorted by relative path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _CODE_SKIP_DIRS]
        found += [Path(dirpath, f) for f in filenames if f.endswith(".py")]
    # Sort on the relative path so the order does not depend on os.walk or the install prefix.
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _code_chunks(rng: random.Random) -> Iterator[str]:
    """Chunks of stdlib files, files visited in a seed-dependent order (cycling if ever needed)."""
    files = _stdlib_files()
    rng.shuffle(files)
    while True:
        produced = 0
        for path in files:
            try:
                source = path.read_text(encoding="utf-8", errors="replace")
            except OSError:  # unreadable files are simply skipped
                continue
            chunks = [c for c in _split_lines(source, CODE_CHUNK_CHARS) if len(c.strip()) >= 200]
            produced += len(chunks[:CODE_CHUNKS_PER_FILE])
            yield from chunks[:CODE_CHUNKS_PER_FILE]
        if not produced:  # e.g. a zipped or stripped stdlib: fail instead of looping forever
            raise RuntimeError(f"no usable .py sources under {sysconfig.get_paths()['stdlib']}")


def _split_lines(text: str, max_chars: int) -> Iterator[str]:
    """Splits `text` into pieces of at most `max_chars`, at line boundaries where possible."""
    piece, size = [], 0
    for line in text.splitlines(keepends=True):
        while len(line) > max_chars:  # a single overlong line is cut hard
            if piece:
                yield "".join(piece)
                piece, size = [], 0
            yield line[:max_chars]
            line = line[max_chars:]
        if size + len(line) > max_chars:
            yield "".join(piece)
            piece, size = [], 0
        piece.append(line)
        size += len(line)
    if piece:
        yield "".join(piece)


# --------------------------------------------------------------------------------------------------
# arithmetic: word problems with worked solutions
# --------------------------------------------------------------------------------------------------

_ITEMS = "apples marbles stickers pencils cookies stamps shells cards books eggs oranges coins".split()


def _arithmetic_file(rng: random.Random, chars: int) -> str:
    """The arithmetic corpus: {"question": ..., "answer": ...} lines."""
    size = lambda r: len(r["question"]) + 1 + len(r["answer"])  # noqa: E731 -- as the template renders
    problems = _take(_forever(_arithmetic_problem, rng), chars, size)
    return _jsonl(problems)


def _arithmetic_problem(rng: random.Random) -> dict[str, str]:
    """One problem of a random kind."""
    kind = rng.choice([_running_total, _running_total, _shopping, _travel, _rectangle])
    question, steps = kind(rng)
    answer = "\n".join(f"{a} {op} {b} = {c}" for a, op, b, c in steps) + f"\n#### {steps[-1][3]}"
    return {"question": question, "answer": answer}


def _running_total(rng: random.Random) -> tuple[str, list[tuple]]:
    """Someone's stock of items changes over one to four steps."""
    name, item = rng.choice(_WORDS["name"]), rng.choice(_ITEMS)
    value = rng.randint(2, 60)
    sentences, steps = [f"{name} has {value} {item}."], []
    for _ in range(rng.randint(1, 4)):
        sentence, op, operand, new = _stock_change(rng, name, value)
        sentences.append(sentence)
        steps.append((value, op, operand, new))
        value = new
    sentences.append(f"How many {item} does {name} have now?")
    return " ".join(sentences), steps


def _stock_change(rng: random.Random, name: str, value: int) -> tuple[str, str, int, int]:
    """One change to a stock of `value`: (sentence, operator, operand, new value)."""
    divisors = [k for k in range(2, 10) if value % k == 0 and value > k]
    # Subtractions leave at least one item, so every later step stays meaningful.
    ops = ["+", "+"] + (["-"] if value >= 2 else [])
    ops += (["*"] if value <= 200 else []) + (["/"] if divisors else [])
    op = rng.choice(ops)
    if op == "+":
        n = rng.randint(1, 50)
        text = rng.choice(["{p} buys {n} more.", "A friend gives {p} {n} more.", "{p} finds {n} extra."])
        return text.format(p=name, n=n), op, n, value + n
    if op == "-":
        n = rng.randint(1, value - 1)
        text = rng.choice(["{p} gives away {n}.", "{p} sells {n} of them.", "{p} loses {n}."])
        return text.format(p=name, n=n), op, n, value - n
    if op == "*":
        k = rng.randint(2, 5)
        return f"Then {name} ends up with {k} times as many.", op, k, value * k
    k = rng.choice(divisors)
    return f"{name} splits them equally into {k} boxes and keeps one box.", op, k, value // k


def _shopping(rng: random.Random) -> tuple[str, list[tuple]]:
    """Buying several items and getting change."""
    name, item = rng.choice(_WORDS["name"]), rng.choice(_ITEMS)
    count, price = rng.randint(2, 12), rng.randint(1, 25)
    cost = count * price
    paid = next(b for b in (10, 20, 50, 100, 200, 500) if b >= cost)
    question = (f"{name} buys {count} {item} at {price} dollars each and pays with a {paid} dollar "
                f"bill. How much change does {name} get?")
    return question, [(count, "*", price, cost), (paid, "-", cost, paid - cost)]


def _travel(rng: random.Random) -> tuple[str, list[tuple]]:
    """Distance over two legs at one speed."""
    speed, first, second = rng.randint(3, 90), rng.randint(1, 6), rng.randint(1, 6)
    vehicle = rng.choice(["A train", "A cyclist", "A bus", "A boat", "A truck"])
    question = (f"{vehicle} travels at {speed} km per hour for {first} hours, rests, then travels "
                f"{second} more hours at the same speed. How many km does it cover in total?")
    a, b = speed * first, speed * second
    return question, [(speed, "*", first, a), (speed, "*", second, b), (a, "+", b, a + b)]


def _rectangle(rng: random.Random) -> tuple[str, list[tuple]]:
    """Area of a rectangle minus a square patch."""
    width, length = rng.randint(3, 40), rng.randint(3, 40)
    side = rng.randint(1, min(width, length) - 1)
    area, patch = width * length, side * side
    question = (f"A garden is {width} m wide and {length} m long. A square pond with sides of {side} m "
                f"is dug in it. How many square meters of garden are left?")
    return question, [(width, "*", length, area), (side, "*", side, patch), (area, "-", patch, area - patch)]


# --------------------------------------------------------------------------------------------------
# traces: algorithm executions, one line each
# --------------------------------------------------------------------------------------------------


def _traces_file(rng: random.Random, chars: int) -> str:
    """The traces corpus: one trace per line."""
    return "".join(line + "\n" for line in _take(_forever(_trace, rng), chars, len))


def _trace(rng: random.Random) -> str:
    """One trace of a random algorithm, steps joined by " ; "."""
    kind = rng.choice([_bubble_sort, _bubble_sort, _gcd, _count_letter, _binary_search,
                       _fibonacci, _to_binary, _running_max, _collatz])
    return " ; ".join(kind(rng))


def _bubble_sort(rng: random.Random) -> list[str]:
    """Bubble sort with every compare and swap, stopping after a pass without swaps."""
    items = [rng.randint(0, 99) for _ in range(rng.randint(3, 7))]
    steps = [f"bubble sort {items}"]
    for end in range(len(items) - 1, 0, -1):
        steps.append(f"pass {len(items) - end}")
        swapped = False
        for i in range(end):
            a, b = items[i], items[i + 1]
            if a > b:
                items[i], items[i + 1] = b, a
                swapped = True
                steps.append(f"compare {a} {b} -> swap -> {items}")
            else:
                steps.append(f"compare {a} {b} -> keep")
        if not swapped:
            break
    return steps + [f"sorted {items}"]


def _gcd(rng: random.Random) -> list[str]:
    """Euclid's algorithm."""
    a, b = rng.randint(10, 999), rng.randint(2, 500)
    steps = [f"gcd({a}, {b})"]
    while b:
        steps.append(f"{a} mod {b} = {a % b}")
        a, b = b, a % b
    return steps + [f"answer {a}"]


def _count_letter(rng: random.Random) -> list[str]:
    """Counting one letter in a random word, letter by letter."""
    word = "".join(rng.choice("abcdeo") for _ in range(rng.randint(4, 12)))
    target, count = rng.choice("abcde"), 0
    steps = [f"count '{target}' in \"{word}\""]
    for ch in word:
        count += ch == target
        steps.append(f"{ch} -> {count}")
    return steps + [f"answer {count}"]


def _binary_search(rng: random.Random) -> list[str]:
    """Binary search in a sorted list, for a value that may be missing."""
    items = sorted(rng.sample(range(100), rng.randint(5, 12)))
    target = rng.choice(items) if rng.random() < 0.7 else rng.randint(0, 99)
    steps, lo, hi = [f"search {target} in {items}"], 0, len(items) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        if items[mid] == target:
            return steps + [f"lo={lo} hi={hi} mid={mid} value {items[mid]} == {target}", f"found at {mid}"]
        if items[mid] < target:
            steps.append(f"lo={lo} hi={hi} mid={mid} value {items[mid]} < {target} -> lo={mid + 1}")
            lo = mid + 1
        else:
            steps.append(f"lo={lo} hi={hi} mid={mid} value {items[mid]} > {target} -> hi={mid - 1}")
            hi = mid - 1
    return steps + [f"lo={lo} > hi={hi}", "not found"]


def _fibonacci(rng: random.Random) -> list[str]:
    """Fibonacci numbers built up term by term."""
    n = rng.randint(3, 20)
    steps, a, b = [f"fib {n}", "f0=0", "f1=1"], 0, 1
    for i in range(2, n + 1):
        a, b = b, a + b
        steps.append(f"f{i}={b - a}+{a}={b}")
    return steps + [f"answer {b}"]


def _to_binary(rng: random.Random) -> list[str]:
    """Decimal to binary by repeated division."""
    n = rng.randint(2, 1000)
    steps, value, bits = [f"to binary {n}"], n, []
    while value:
        steps.append(f"{value} // 2 = {value // 2} r {value % 2}")
        bits.append(str(value % 2))
        value //= 2
    binary = "".join(reversed(bits))
    return steps + [f"read remainders upward {binary}", f"answer {binary}"]


def _running_max(rng: random.Random) -> list[str]:
    """Maximum of a list by a single scan."""
    items = [rng.randint(-50, 99) for _ in range(rng.randint(3, 9))]
    best, steps = items[0], [f"max {items}", f"best={items[0]}"]
    for x in items[1:]:
        if x > best:
            steps.append(f"{x} > {best} -> best={x}")
            best = x
        else:
            steps.append(f"{x} <= {best} -> keep")
    return steps + [f"answer {best}"]


def _collatz(rng: random.Random) -> list[str]:
    """The Collatz sequence down to 1 (capped, so traces stay short)."""
    n = rng.randint(2, 60)
    steps, count = [f"collatz {n}"], 0
    while n != 1 and count < 40:
        nxt = n // 2 if n % 2 == 0 else 3 * n + 1
        steps.append(f"{n} {'even' if n % 2 == 0 else 'odd'} -> {nxt}")
        n, count = nxt, count + 1
    return steps + [f"steps {count}" if n == 1 else f"stopped after {count} steps"]
