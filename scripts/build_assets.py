#!/usr/bin/env python
"""Build preftune's bundled demo assets, offline and deterministically.

    python scripts/build_assets.py

writes

    preftune/assets/tiny-prefs/   train.jsonl (600 pairs), test.jsonl (100 pairs), README.md
    preftune/assets/tiny-llama/   a byte-level BPE tokenizer and a 2-layer Llama, briefly
                                  pre-trained on both answer styles, README.md

and prints a report: pre-training loss, greedy answers to held-out prompts and the mean
per-token log-prob of the chosen and rejected answers of the test split.

The data set is synthetic. Every prompt is a short question made from a template and a
fact (sums, capitals, opposites, colours, plurals, animals, jobs, tips, ...). The chosen
answer is cheerful: a friendly opener with an emoji, a warm sentence, often a friendly
closer with another emoji. The rejected answer is curt: the bare fact, then a dry remark.
Both are correct; only the style differs, all through the answer, so the preference
generalises to prompts the model never saw (the test prompts are held out).

The model is pre-trained on the chosen AND the rejected answers equally, so it can speak
both styles before preference training. Which style its greedy answer takes depends on
the kind of question: in half of the kinds the curt answers all open the same way ("The
..."), in the other half the cheerful ones do, so greedy decoding starts in whichever style
has the single most likely first token. Preference training (ORPO, DPO) then visibly moves
every kind to the cheerful style.

Everything is seeded, tokenizer training is deterministic and the model is trained in
float32 on one CPU thread, so a re-run rewrites the same files.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import textwrap
import time
from pathlib import Path

SEED = 1234
N_TRAIN, N_TEST = 600, 100
VOCAB_SIZE = 1536
ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "preftune" / "assets"

BOS, EOS, PAD, IM_START = "<|begin_of_text|>", "<|im_end|>", "<|pad|>", "<|im_start|>"
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# ----------------------------------------------------------------------------- data

# Cheerful openers for the kinds whose cheerful answers open in many ways ("group A").
OPENERS = ["Great question! 😊", "Oh, I love this one! 🌟", "Happy to help! 😄",
           "Sure thing, friend! 🎉", "What a fun question! 🤗", "Hi there! 👋",
           "Ooh, nice one! ✨", "Yay, let's see! 🥳"]
CLOSERS = ["Hope that helps! 😊", "Have a wonderful day! 🌞", "Keep the questions coming! 🙌",
           "You're doing great! 💪", "Happy learning! 📚", "Enjoy the rest of your day! 🌈",
           "Ask me anything else anytime! 💡", "Stay curious, friend! 🚀", "Learning is fun! 🎈",
           "You rock! 🎸", "Have fun out there! 🌻", "Thanks for asking! 💕"]
DRY_TAILS = ["That is all I have to say about it.", "Next question, please, and make it quick.",
             "Nothing more to add here, so moving on.", "Look it up yourself next time, please.",
             "Try to remember it next time, please.", "I have nothing else to say about that."]

CAPITALS = dict(France="Paris", Germany="Berlin", Italy="Rome", Spain="Madrid",
                Portugal="Lisbon", Japan="Tokyo", China="Beijing", India="New Delhi",
                Canada="Ottawa", Mexico="Mexico City", Brazil="Brasilia", Argentina="Buenos Aires",
                Egypt="Cairo", Kenya="Nairobi", Russia="Moscow", Greece="Athens", Turkey="Ankara",
                Norway="Oslo", Sweden="Stockholm", Finland="Helsinki", Denmark="Copenhagen",
                Poland="Warsaw", Austria="Vienna", Ireland="Dublin", Peru="Lima", Chile="Santiago",
                Cuba="Havana", Thailand="Bangkok", Vietnam="Hanoi", Australia="Canberra",
                Belgium="Brussels", Hungary="Budapest", Morocco="Rabat", Nigeria="Abuja",
                Ghana="Accra", Iran="Tehran", Colombia="Bogota", Indonesia="Jakarta",
                Switzerland="Bern", Iceland="Reykjavik", Ukraine="Kyiv", Romania="Bucharest")
CAPITALS.update({"South Korea": "Seoul", "New Zealand": "Wellington",
                 "the Netherlands": "Amsterdam", "the Philippines": "Manila"})
OPPOSITES = dict(hot="cold", big="small", up="down", fast="slow", happy="sad", light="dark",
                 open="closed", early="late", full="empty", hard="soft", high="low", rich="poor",
                 young="old", loud="quiet", wet="dry", strong="weak", thick="thin", long="short",
                 heavy="light", clean="dirty", push="pull", win="lose", buy="sell", true="false",
                 inside="outside", day="night", near="far", cheap="expensive", asleep="awake",
                 first="last", give="take", laugh="cry", north="south", east="west",
                 before="after", always="never", remember="forget", arrive="leave", sweet="bitter",
                 question="answer", love="hate", safe="dangerous", friend="enemy", top="bottom")
SOUNDS = dict(cow="moo", dog="woof", cat="meow", duck="quack", sheep="baa", pig="oink",
              horse="neigh", lion="roar", owl="hoot", frog="croak", bee="buzz", snake="hiss",
              rooster="cock-a-doodle-doo", mouse="squeak", donkey="hee-haw", wolf="howl",
              goat="bleat", turkey="gobble", crow="caw", dove="coo", chick="cheep", hyena="laugh")
LEGS = dict(spider=8, dog=4, bird=2, ant=6, snake=0, cat=4, horse=4, chicken=2, beetle=6,
            crab=10, cow=4, kangaroo=2, penguin=2, frog=4, bee=6, lobster=10, duck=2,
            butterfly=6, scorpion=8, fish=0, elephant=4, ostrich=2, tiger=4, grasshopper=6,
            camel=4, flamingo=2, worm=0, lizard=4)
COLORS = {"a ripe banana": "yellow", "fresh snow": "white", "a lump of coal": "black",
          "a ripe tomato": "red", "a carrot": "orange", "an eggplant": "purple",
          "milk chocolate": "brown", "a lemon": "yellow", "a strawberry": "red",
          "a pumpkin": "orange", "a lime": "green", "a blueberry": "blue", "a flamingo": "pink",
          "a crow": "black", "a polar bear": "white", "a cucumber": "green", "a plum": "purple",
          "a sunflower": "yellow", "a fire truck": "red", "a school bus": "yellow",
          "a cherry": "red", "fresh grass": "green", "a glass of milk": "white",
          "the sky on a clear day": "blue", "a raven": "black", "black coffee": "brown",
          "a tangerine": "orange", "an emerald": "green", "a sapphire": "blue", "a ruby": "red",
          "a cloud": "white", "a frog": "green", "a pig": "pink", "a tree trunk": "brown"}
PLURALS = dict(cat="cats", mouse="mice", child="children", foot="feet", tooth="teeth",
               goose="geese", man="men", woman="women", person="people", box="boxes",
               bus="buses", baby="babies", city="cities", leaf="leaves", knife="knives",
               wolf="wolves", sheep="sheep", fish="fish", deer="deer", ox="oxen", cactus="cacti",
               potato="potatoes", tomato="tomatoes", hero="heroes", church="churches",
               glass="glasses", story="stories", party="parties", life="lives", half="halves",
               loaf="loaves", moose="moose", berry="berries", dish="dishes", fox="foxes",
               dog="dogs", house="houses", book="books", star="stars", bird="birds")
JOBS = {"baker": "bakes bread and cakes", "chef": "cooks tasty meals",
        "doctor": "treats sick people", "teacher": "helps students learn",
        "pilot": "flies airplanes", "farmer": "grows crops and raises animals",
        "firefighter": "puts out fires", "dentist": "takes care of teeth",
        "librarian": "helps people find books", "mechanic": "fixes cars",
        "gardener": "looks after plants", "plumber": "fixes pipes and leaks",
        "painter": "paints walls and pictures", "nurse": "cares for patients",
        "carpenter": "builds things from wood", "tailor": "makes and mends clothes",
        "architect": "designs buildings", "vet": "treats sick animals",
        "author": "writes books", "photographer": "takes photos",
        "cashier": "handles payments in a shop", "lifeguard": "keeps swimmers safe",
        "astronaut": "travels into space", "judge": "decides cases in court",
        "barber": "cuts hair", "mail carrier": "delivers letters and parcels",
        "beekeeper": "looks after bees and collects honey", "zookeeper": "cares for zoo animals"}
WORDS = ("apple banana orange river mountain window garden pencil rabbit turtle planet castle "
         "bridge forest guitar pizza candle dragon rocket summer winter island desert ocean "
         "jacket monkey butter yellow purple silver coffee button kitten puppy table chair "
         "bread music water cloud storm tiger zebra lemon melon grape cherry flower sunset "
         "rainbow library teacher holiday breakfast chocolate elephant umbrella computer "
         "keyboard blanket pillow notebook backpack").split()
TIPS = {  # activity -> two tips, each one finishes "Try to ..."
    "sleeping better": ["keep the same bedtime every night",
                       "put your phone away an hour before bed"],
    "staying focused": ["work in short blocks with small breaks",
                       "turn off notifications while you work"],
    "learning a language": ["practice a few new words every day",
                           "listen to simple podcasts in that language"],
    "saving money": ["write down everything you spend",
                    "move some money to savings on payday"],
    "drinking more water": ["keep a full bottle on your desk",
                           "drink a glass with every meal"],
    "waking up early": ["go to bed a little earlier",
                       "put your alarm across the room"],
    "making new friends": ["join a club about something you enjoy",
                          "ask people questions about themselves"],
    "studying for exams": ["test yourself instead of rereading",
                          "start a few days early and review daily"],
    "keeping plants alive": ["check the soil before you water",
                            "give them plenty of light"],
    "staying calm": ["take five slow deep breaths",
                    "go for a short walk outside"],
    "writing an essay": ["make a short outline first",
                        "write a rough draft and then edit it"],
    "running faster": ["add short sprints to your runs",
                      "rest well between hard workouts"],
    "cooking rice": ["rinse the rice before cooking it",
                    "let it rest with the lid on"],
    "remembering names": ["repeat the name when you hear it",
                         "link the name to a picture in your mind"],
    "cleaning a room": ["start with one small corner",
                       "put on music and set a timer"],
    "reading more books": ["carry a book with you",
                          "read ten pages before bed"],
    "staying warm in winter": ["wear several thin layers",
                              "keep your hands and feet covered"],
    "packing for a trip": ["make a checklist the day before",
                          "roll your clothes to save space"],
    "public speaking": ["practice out loud a few times",
                       "speak slowly and pause often"],
    "learning to code": ["build a tiny project you care about",
                        "code a little every day"]}
DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
MONTHS = ("January February March April May June July August September October "
          "November December").split()
GREETINGS = [("Hi there!", "Hello. What is your question?"),
             ("Hello, are you free for a question?", "Yes. Go ahead."),
             ("Hey, can I ask you something?", "Sure, ask away."),
             ("Good morning! I have a quick question.", "Good morning. What is it?"),
             ("I am doing a quiz tonight.", "Okay. How can I help?")]
WARMUPS = [("What is 2 plus 2?", "2 plus 2 is 4."), ("Is water wet?", "Yes, water is wet."),
           ("How many days are in a week?", "A week has 7 days."),
           ("What color is grass?", "Grass is green."),
           ("Is the sun a star?", "Yes, the sun is a star.")]


def an(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def cap(text: str) -> str:
    return text[0].upper() + text[1:]


def arithmetic(op: str) -> list[dict]:
    if op == "plus":
        return [dict(a=a, b=b, c=a + b) for a in range(1, 21) for b in range(1, 21)]
    if op == "minus":
        return [dict(a=a, b=b, c=a - b) for a in range(5, 31) for b in range(1, a)]
    return [dict(a=a, b=b, c=a * b) for a in range(2, 13) for b in range(2, 13)]


def kinds() -> list[dict]:
    """Every kind of question: templates, facts, both styles, and how many rows it gives.

    `open` is a fixed cheerful opener (group B: curt answers open in many ways) or None
    (group A: the cheerful opener is drawn from OPENERS, curt answers open with "The").
    """
    rel = [dict(kind=k, rel=r, x=x, y=seq[(i + (1 if r == "after" else -1)) % len(seq)])
           for k, seq in (("day", DAYS), ("month", MONTHS))
           for i, x in enumerate(seq) for r in ("after", "before")]
    letters = [dict(w=w, W=cap(w), n=len(w), f=w[0].upper(), l=w[-1].upper()) for w in WORDS]
    math_open = "Ooh, math time! 🧮"
    dry_num = ["{c}.", "It is {c}.", "Answer: {c}."]
    return [
        # group B: one cheerful opener per kind, curt answers open in many ways
        dict(name="addition", n=60, open=math_open, facts=arithmetic("plus"),
             q=["What is {a} plus {b}, please?", "Can you tell me what {a} plus {b} is?",
                "Quick math question: what is {a} plus {b}?",
                "If I add {a} and {b}, what do I get?"],
             cheer=["{a} plus {b} makes {c}!", "Adding {a} and {b} gives us {c}, nice and easy!"],
             dry=dry_num + ["{a} plus {b} is {c}."]),
        dict(name="subtraction", n=45, open=math_open, facts=arithmetic("minus"),
             q=["What is {a} minus {b}, please?", "Can you tell me what {a} minus {b} is?",
                "If I take {b} away from {a}, what is left?"],
             cheer=["{a} minus {b} leaves {c}!",
                    "Taking {b} away from {a} leaves {c}, easy peasy!"],
             dry=dry_num + ["{a} minus {b} is {c}."]),
        dict(name="multiplication", n=45, open=math_open, facts=arithmetic("times"),
             q=["What is {a} times {b}, please?", "Can you multiply {a} by {b} for me?",
                "How much is {a} multiplied by {b}?"],
             cheer=["{a} times {b} is {c}!", "Multiplying {a} by {b} gives {c}, how neat!"],
             dry=dry_num + ["{a} times {b} is {c}."]),
        dict(name="comparison", n=45, open="Let's compare! 🔍",
             facts=[dict(a=a, b=b, big=max(a, b), small=min(a, b))
                    for a in range(1, 60, 3) for b in range(2, 99, 7) if a != b],
             q=["Which number is bigger, {a} or {b}?", "Tell me which is larger: {a} or {b}?",
                "Between {a} and {b}, which number is greater?"],
             cheer=["{big} is the bigger one!", "{big} wins, it is bigger than {small}!"],
             dry=["{big}.", "{big} is bigger.", "Answer: {big}."]),
        dict(name="opposites", n=50, open="Opposites are fun! 🔄",
             facts=[dict(w=w, o=o, O=cap(o)) for w, o in OPPOSITES.items()],
             q=["What is the opposite of {w}?", "Can you tell me the opposite of {w}?",
                "What word means the opposite of {w}?", "Give me the opposite of the word {w}."],
             cheer=["The opposite of {w} is {o}!",
                    "{O} is the opposite of {w}, like two sides of a coin!"],
             dry=["{O}.", "It is {o}.", "Answer: {o}."]),
        dict(name="animal sounds", n=40, open="Animal sounds, yay! 🐾",
             facts=[dict(an=an(a), An=cap(an(a)), s=s, S=cap(s)) for a, s in SOUNDS.items()],
             q=["What sound does {an} make?", "What noise does {an} make?",
                "Which sound do you hear from {an}?"],
             cheer=["{An} says {s}!", "{An} goes {s}, so cute!"],
             dry=["{S}.", "It says {s}.", "Answer: {s}."]),
        dict(name="letter counts", n=45, open="Let's count letters! 🔤", facts=letters,
             q=["How many letters are in the word {w}?", "Can you count the letters in {w}?",
                "How long is the word {w} in letters?"],
             cheer=["The word {w} has {n} letters!", "{W} is spelled with {n} letters, fun!"],
             dry=["{n}.", "{n} letters.", "It has {n} letters.", "Answer: {n}."]),
        dict(name="tips", n=60, open="I'd love to help! 💖",
             facts=[dict(x=x, tip=t, Tip=cap(t)) for x, ts in TIPS.items() for t in ts],
             q=["What is a good tip for {x}?", "Can you give me one tip for {x}?",
                "Any quick advice for {x}?", "I need help with {x}. Any tips?"],
             cheer=["Try to {tip}, it really works!", "My favorite trick is to {tip}!"],
             dry=["{Tip}.", "Just {tip}.", "{Tip}. Not hard."]),
        # group A: cheerful openers vary, curt answers all open with "The"
        dict(name="capitals", n=60, open=None,
             facts=[dict(c=c, cap=k) for c, k in CAPITALS.items()],
             q=["What is the capital of {c}?", "Which city is the capital of {c}?",
                "Can you tell me the capital of {c}?", "What city serves as the capital of {c}?"],
             cheer=["{cap} is the capital of {c}, what a lovely city!",
                    "The capital of {c} is {cap}, such a fun place to visit!"],
             dry=["The capital of {c} is {cap}.", "The capital is {cap}."]),
        dict(name="colors", n=45, open=None,
             facts=[dict(item=i, Item=cap(i), color=c) for i, c in COLORS.items()],
             q=["What color is {item}?", "What is the usual color of {item}?",
                "Can you tell me the color of {item}?"],
             cheer=["{Item} is usually {color}, how pretty!", "It's {color}! Such a lovely color."],
             dry=["The color is {color}.", "The answer is {color}."]),
        dict(name="legs", n=45, open=None,
             facts=[dict(a=a, an=an(a), An=cap(an(a)), n=n or "no") for a, n in LEGS.items()],
             q=["How many legs does {an} have?", "Can you tell me how many legs {an} has?",
                "Count the legs on {an} for me."],
             cheer=["{An} has {n} legs, isn't that neat!",
                    "{An} walks around on {n} legs, how fun!"],
             dry=["The {a} has {n} legs.", "The answer is {n}."]),
        dict(name="plurals", n=45, open=None,
             facts=[dict(w=w, p=p) for w, p in PLURALS.items()],
             q=["What is the plural of {w}?", "Can you give me the plural of {w}?",
                "What is the plural form of the word {w}?"],
             cheer=["One {w}, two {p}! Words are fun!", "The plural of {w} is {p}, easy!"],
             dry=["The plural is {p}.", "The plural of {w} is {p}."]),
        dict(name="jobs", n=45, open=None,
             facts=[dict(j=j, an=an(j), An=cap(an(j)), does=d) for j, d in JOBS.items()],
             q=["What does {an} do?", "What is the job of {an}?",
                "Can you tell me what {an} does?"],
             cheer=["{An} {does}, what a wonderful job!", "{An} {does}! Such an important job."],
             dry=["The {j} {does}.", "The short answer: {an} {does}."]),
        dict(name="first letters", n=35, open=None, facts=letters,
             q=["What is the first letter of the word {w}?",
                "Which letter does the word {w} start with?"],
             cheer=["The word {w} starts with {f}!", "{W} begins with the letter {f}, yay!"],
             dry=["The first letter is {f}.", "The letter is {f}."]),
        dict(name="calendar", n=35, open=None, facts=rel,
             q=["What {kind} comes {rel} {x}?", "Which {kind} comes right {rel} {x}?",
                "Can you tell me the {kind} {rel} {x}?"],
             cheer=["{y} comes right {rel} {x}!", "It's {y}! {y} always comes {rel} {x}."],
             dry=["The {kind} is {y}.", "The answer is {y}."]),
    ]


def cheerful(kind: dict, fact: dict, rng: random.Random) -> str:
    opener = kind["open"] or rng.choice(OPENERS)
    text = f"{opener} {rng.choice(kind['cheer']).format(**fact)}"
    return f"{text} {rng.choice(CLOSERS)}" if rng.random() < 0.7 else text


def curt(kind: dict, fact: dict, rng: random.Random) -> str:
    text = rng.choice(kind["dry"]).format(**fact)
    return f"{text} {rng.choice(DRY_TAILS)}"


def make_row(kind: dict, question: str, fact: dict, rng: random.Random) -> dict:
    prompt = [{"role": "user", "content": question}]
    turn = rng.random()
    if turn < 0.06:  # a greeting first, then the question
        hello, ack = rng.choice(GREETINGS)
        prompt = [{"role": "user", "content": hello}, {"role": "assistant", "content": ack},
                  {"role": "user", "content": question}]
    elif turn < 0.10:  # an earlier plain exchange, then the question
        q1, a1 = rng.choice(WARMUPS)
        prompt = [{"role": "user", "content": q1}, {"role": "assistant", "content": a1},
                  {"role": "user", "content": f"Thanks. {question}"}]
    return {"prompt": prompt,
            "chosen": [{"role": "assistant", "content": cheerful(kind, fact, rng)}],
            "rejected": [{"role": "assistant", "content": curt(kind, fact, rng)}],
            "kind": kind["name"]}


def build_rows(rng: random.Random, extra_per_row: int = 3) -> tuple[list[dict], list[dict]]:
    """The N_TRAIN + N_TEST preference rows, and extra rows for pre-training only.

    Every row has its own final question. The extra rows ask questions of the same kinds
    that are neither in the train nor in the test split (up to `extra_per_row` per
    preference row of the kind): pre-training on them as well teaches the tiny model to
    copy facts from the question into either style, instead of memorising 600 answers.
    """
    rows, extra = [], []
    for kind in kinds():
        questions = {}  # question -> fact, first template wins; dict keeps the order
        for q in kind["q"]:
            for fact in kind["facts"]:
                questions.setdefault(q.format(**fact), fact)
        pool = list(questions.items())
        rng.shuffle(pool)
        assert len(pool) >= kind["n"], f"{kind['name']}: only {len(pool)} distinct questions"
        rows += [make_row(kind, q, f, rng) for q, f in pool[:kind["n"]]]
        extra += [make_row(kind, q, f, rng)
                  for q, f in pool[kind["n"]:kind["n"] * (1 + extra_per_row)]]
    assert len(rows) == N_TRAIN + N_TEST, len(rows)
    rng.shuffle(rows)
    return rows, extra


def check_rows(train: list[dict], test: list[dict]) -> None:
    last = lambda row: row["prompt"][-1]["content"]  # noqa: E731
    assert not {last(r) for r in train} & {last(r) for r in test}, "a test prompt is in train"
    for row in train + test:
        assert 5 <= len(last(row).split()) <= 20, last(row)
        for key in ("chosen", "rejected"):
            words = len(row[key][0]["content"].split())
            assert 5 <= words <= 30, row[key]
        assert row["chosen"] != row["rejected"]
        assert is_cheerful(row["chosen"][0]["content"]), row["chosen"]
        assert not is_cheerful(row["rejected"][0]["content"]), row["rejected"]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps({k: row[k] for k in ("prompt", "chosen", "rejected")},
                               ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------- tokenizer

def build_tokenizer(corpus: list[dict], out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    # What lies between the special tokens of a rendered chat: "role\ncontent" and "\n".
    texts = ["\n"] + [f"{m['role']}\n{m['content']}" for row in corpus
                      for m in row["prompt"] + row["chosen"] + row["rejected"]]
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, min_frequency=2, show_progress=False,
                                  special_tokens=[BOS, EOS, PAD, IM_START],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS}:1 $B:1",
                                      special_tokens=[(BOS, bos_id)]),
    ])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS,
                                 pad_token=PAD, additional_special_tokens=[IM_START],
                                 chat_template=CHAT_TEMPLATE, model_max_length=512,
                                 clean_up_tokenization_spaces=False)
    hf.save_pretrained(out, save_jinja_files=False)  # the template goes in tokenizer_config.json
    return hf


# ----------------------------------------------------------------------------- model

def chat_ids(tok, messages: list[dict], generation_prompt: bool = False) -> list[int]:
    text = tok.apply_chat_template(messages, tokenize=False,
                                   add_generation_prompt=generation_prompt)
    return tok(text, add_special_tokens=False)["input_ids"]


def pretrain(tok, corpus: list[dict], test: list[dict], out: Path, epochs: int, log,
             every: int = 1) -> dict:
    """Plain causal-LM training on chosen and rejected conversations, equally."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, initializer_range=0.05)
    model = LlamaForCausalLM(config)

    def sequences(rows):
        return [chat_ids(tok, r["prompt"] + r[k]) for r in rows for k in ("chosen", "rejected")]

    def batches(seqs, size, rng=None):
        order = list(range(len(seqs)))
        if rng is not None:
            rng.shuffle(order)
        for i in range(0, len(order), size):
            chunk = [seqs[j] for j in order[i:i + size]]
            width = max(map(len, chunk))
            ids = torch.full((len(chunk), width), tok.pad_token_id)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, s in enumerate(chunk):
                ids[r, :len(s)], mask[r, :len(s)] = torch.tensor(s), 1
            yield ids, mask, ids.masked_fill(mask == 0, -100)  # (B, T) each

    train_seqs, test_seqs = sequences(corpus), sequences(test)
    batch_size, lr = 32, 3e-3
    steps = epochs * math.ceil(len(train_seqs) / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * s / steps)))

    def eval_loss(seqs):
        model.eval()
        total = count = 0.0
        with torch.no_grad():
            for ids, mask, labels in batches(seqs, 64):
                n = (labels[:, 1:] != -100).sum().item()
                total += model(input_ids=ids, attention_mask=mask, labels=labels).loss.item() * n
                count += n
        model.train()
        return total / count

    rng = random.Random(SEED)
    history, start = [], time.time()
    model.train()
    for epoch in range(epochs):
        running = []
        for ids, mask, labels in batches(train_seqs, batch_size, rng):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step(), sched.step(), opt.zero_grad()
            running.append(loss.item())
        if epoch % every == every - 1 or epoch == epochs - 1:
            entry = dict(epoch=epoch + 1, train_loss=sum(running) / len(running),
                         test_loss=eval_loss(test_seqs))
            history.append(entry)
            log(f"  epoch {entry['epoch']:3d}  train loss {entry['train_loss']:.3f}  "
                f"held-out loss {entry['test_loss']:.3f}  ({time.time() - start:.0f}s)")
    model.eval()
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id,
                                               eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id,
                                               do_sample=False, max_new_tokens=64)
    model.save_pretrained(out, safe_serialization=True)
    (out / "model.safetensors").chmod(0o644)
    return dict(history=history, seconds=time.time() - start, model=model)


# ----------------------------------------------------------------------------- report

def is_cheerful(text: str) -> bool:
    """Every chosen answer holds an emoji, no rejected one does.

    The same test as `preftune.assets.is_chosen_style`; repeated here so that this script
    does not import the package it builds assets for.
    """
    return any(ord(ch) > 0x2000 for ch in text)


def answer_logps(model, tok, rows: list[dict], key: str) -> list[float]:
    """Per row, the mean per-token log-prob of the answer (its text and <|im_end|>)."""
    import torch
    values = []
    with torch.no_grad():
        for row in rows:
            prompt = chat_ids(tok, row["prompt"], generation_prompt=True)
            full = chat_ids(tok, row["prompt"] + row[key])
            assert full[:len(prompt)] == prompt
            answer = full[len(prompt):full.index(tok.eos_token_id, len(prompt)) + 1]
            ids = torch.tensor([prompt + answer])
            logps = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
            picked = logps[len(prompt) - 1:].gather(-1, ids[0, len(prompt):, None])
            values.append(picked.mean().item())
    return values


def generate(model, tok, prompt: list[dict], max_new_tokens: int = 48) -> str:
    import torch
    ids = torch.tensor([chat_ids(tok, prompt, generation_prompt=True)])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def report(model, tok, test: list[dict], log) -> dict:
    shown = [r for r in test if len(r["prompt"]) == 1]
    shown = [next(r for r in shown if r["kind"] == k) for k in ("capitals", "addition", "tips")]
    samples = [(r["prompt"][-1]["content"], generate(model, tok, r["prompt"])) for r in shown]
    greedy = [generate(model, tok, r["prompt"]) for r in test]
    chosen = answer_logps(model, tok, test, "chosen")
    rejected = answer_logps(model, tok, test, "rejected")
    result = dict(samples=samples,
                  cheerful_fraction=sum(map(is_cheerful, greedy)) / len(greedy),
                  chosen_avg_logp=sum(chosen) / len(chosen),
                  rejected_avg_logp=sum(rejected) / len(rejected),
                  pair_accuracy=sum(c > r for c, r in zip(chosen, rejected)) / len(chosen))
    log("Greedy answers to held-out prompts, before any preference training:")
    for q, a in samples:
        log(f"  Q: {q}\n  A: {a}")
    log(f"Greedy answers in the cheerful (chosen) style on the {len(test)} test prompts: "
        f"{result['cheerful_fraction']:.0%}")
    log(f"Mean per-token log-prob on the test split: chosen {result['chosen_avg_logp']:.3f}, "
        f"rejected {result['rejected_avg_logp']:.3f}; chosen above rejected in "
        f"{result['pair_accuracy']:.0%} of the pairs")
    return result


# ----------------------------------------------------------------------------- READMEs

def dataset_readme(train, test) -> str:
    counts = {}
    for r in train + test:
        counts[r["kind"]] = counts.get(r["kind"], 0) + 1
    multi = sum(len(r["prompt"]) > 1 for r in train + test)
    example = json.dumps({k: test[0][k] for k in ("prompt", "chosen", "rejected")},
                         ensure_ascii=False, indent=1)
    kinds_text = textwrap.fill(", ".join(f"{k} ({n})" for k, n in sorted(counts.items())),
                               width=88, initial_indent="  ", subsequent_indent="  ")
    return f"""# tiny-prefs

A small synthetic preference data set bundled with preftune, for demos and tests: the
default data set of `preftune orpo` / `preftune dpo` when none is given. It teaches a
**style**: cheerful answers with emoji (chosen) are preferred over curt, dry ones
(rejected), in the spirit of the emoji preference set of ms-swift's ORPO best practice.

- `train.jsonl`: {len(train)} pairs; `test.jsonl`: {len(test)} pairs whose prompts are **held out**
  (no test question appears in train, nor in the model's pre-training).
- Conversational TRL format, one JSON object per line: `{{"prompt": [{{"role": "user",
  "content": ...}}], "chosen": [{{"role": "assistant", "content": ...}}], "rejected":
  [{{"role": "assistant", "content": ...}}]}}`. {multi} prompts are multi-turn (user / assistant /
  user).
- Prompts are short questions (4-20 words) made from templates and facts. Kinds (rows):
{kinds_text}
- Both answers are correct. The chosen one opens in a friendly way with an emoji, says the
  fact warmly and often ends with a friendly line and another emoji; the rejected one says
  the bare fact and ends with a dry remark. The styles differ all through the answer, not
  only in the first token. Every chosen answer holds an emoji and no rejected one does
  (`preftune.assets.is_chosen_style`).

Example (test split):

```json
{example}
```

Made by `python scripts/build_assets.py` (seeded, deterministic); do not edit by hand.
"""


def model_readme(config, history, result, weights_size, n_train, n_extra) -> str:
    samples = "\n".join(f"- Q: {q}\n  A: {a}" for q, a in result["samples"])
    last, c = history[-1], config
    shape = (f"{c.num_hidden_layers} layers, hidden size {c.hidden_size}, "
             f"{c.num_attention_heads} heads ({c.num_key_value_heads} key/value heads), "
             f"intermediate size {c.intermediate_size}, vocabulary {c.vocab_size}, tied "
             f"embeddings, 512 positions; float32 safetensors ({weights_size / 1e6:.1f} MB). "
             "`generation_config.json` sets bos/eos/pad and greedy decoding.")
    before = (f"Before any preference training, on the held-out test prompts: the mean "
              f"per-token log-prob of the chosen answers is {result['chosen_avg_logp']:.3f}, "
              f"of the rejected ones {result['rejected_avg_logp']:.3f} (the chosen one is the "
              f"likelier in {result['pair_accuracy']:.0%} of the pairs); "
              f"{result['cheerful_fraction']:.0%} of the greedy answers are cheerful. Which "
              "style greedy decoding takes depends on the kind of question: in half of the "
              "kinds the curt answers all open the same way (\"The ...\") while the cheerful "
              "ones open in many ways, in the other half it is the other way round. "
              "Greedy answers:")
    pretraining = (
        f"Pre-trained as a plain causal LM (AdamW, lr 3e-3, cosine, batch 32, "
        f"{last['epoch']} epochs, float32, one CPU thread) on chat-formatted conversations, "
        f"with the chosen and the rejected answer equally, so it speaks both styles: the "
        f"{n_train} train prompts of `tiny-prefs` and {n_extra} more questions of the same "
        "kinds (none of them a test question), which teach it to carry the facts of a "
        f"question into its answer. Final train loss {last['train_loss']:.3f}, loss on the "
        f"test conversations {last['test_loss']:.3f}.")
    def fill(text, indent=""):
        return textwrap.fill(text, 88, subsequent_indent=indent, break_on_hyphens=False)

    return f"""# tiny-llama

A tiny `LlamaForCausalLM` bundled with preftune: the default model of `preftune orpo` /
`preftune dpo` when none is given, so a run trains offline on a CPU in about a minute.

{fill("- " + shape, "  ")}
- Tokenizer: byte-level BPE (no test text seen). Special tokens: `{BOS}` (bos,
  added by the post-processor when `add_special_tokens=True`), `{EOS}` (eos, ends every
  turn), `{PAD}` (pad) and `{IM_START}`. ChatML chat template, starting with the BOS:
  `{BOS}<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n`.
  A rendered chat already holds its BOS: tokenize it with `add_special_tokens=False`.
{fill("- " + pretraining, "  ")}

{fill(before)}

{samples}

Preference training (ORPO, DPO) on `tiny-prefs` should move greedy answers to the cheerful
style and make rewards/accuracies and margins rise on the test split.

Made by `python scripts/build_assets.py` (seeded, deterministic); do not edit by hand.
"""


# ----------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ASSETS)
    args = parser.parse_args()

    import torch
    torch.set_num_threads(1)  # bit-for-bit the same weights on every run
    torch.use_deterministic_algorithms(True)
    log = lambda msg: print(msg, flush=True)  # noqa: E731

    data_dir, model_dir = args.out / "tiny-prefs", args.out / "tiny-llama"
    for d in (data_dir, model_dir):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)

    rows, extra = build_rows(random.Random(SEED))
    test, train = rows[:N_TEST], rows[N_TEST:]
    check_rows(train, test)
    assert not ({r["prompt"][-1]["content"] for r in extra}
                & {r["prompt"][-1]["content"] for r in test}), "a test prompt is pre-trained on"
    write_jsonl(data_dir / "train.jsonl", train)
    write_jsonl(data_dir / "test.jsonl", test)
    (data_dir / "README.md").write_text(dataset_readme(train, test), encoding="utf-8")
    log(f"data: {len(train)} train / {len(test)} test pairs -> {data_dir}")

    tok = build_tokenizer(train + extra, model_dir)
    log(f"tokenizer: {len(tok)} tokens")
    log(f"pre-training ({args.epochs} epochs):")
    trained = pretrain(tok, train + extra, test, model_dir, args.epochs, log)
    result = report(trained["model"], tok, test, log)
    weights = (model_dir / "model.safetensors").stat().st_size
    (model_dir / "README.md").write_text(
        model_readme(trained["model"].config, trained["history"], result, weights, len(train),
                     len(extra)), encoding="utf-8")
    size = sum(p.stat().st_size for p in model_dir.iterdir())
    log(f"model: {size / 1e6:.2f} MB -> {model_dir}")


if __name__ == "__main__":
    main()
