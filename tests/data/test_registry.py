"""The registry's preprocessors, each on local rows of its data set's real format (no network)."""
import pytest

from preftune.data import registry
from preftune.data.formats import to_preference_pair


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def system(text):
    return {"role": "system", "content": text}


# One row per registered set, with every column the set's card documents.
RAW_ROWS = {
    "shareAI/DPO-zh-en-emoji": {
        "question": "一个完整的工程项目管理流程包括什么？",
        "answer_zh": "🤔 项目管理流程包括启动、计划、执行、监控和收尾 😂",
        "answer_en": "My fellow wizarding friend! 🧙 A complete project management process, you ask?",
    },
    "trl-lib/ultrafeedback_binarized": {
        "chosen": [user("Use the pygame library to write a version of snake"), assistant("Sure! Here is a snake game: ...")],
        "rejected": [user("Use the pygame library to write a version of snake"), assistant("I cannot write code.")],
        "score_chosen": 6.0,
        "score_rejected": 4.0,
    },
    "mlabonne/orpo-dpo-mix-40k": {
        "source": "airoboros-3.2",
        "chosen": [user("Name three primary colors."), assistant("Red, yellow and blue.")],
        "rejected": [user("Name three primary colors."), assistant("Green.")],
        "prompt": "Name three primary colors.",
        "question": "Name three primary colors.",
    },
    "Anthropic/hh-rlhf": {
        "chosen": "\n\nHuman: What kind of noises did dinosaurs make?\n\nAssistant: Humans and dinosaurs didn't live at the same time.\n\nIt is hard to know.\n\nHuman: yes they did\n\nAssistant: to guess, and that would probably require lots of reading.",
        "rejected": "\n\nHuman: What kind of noises did dinosaurs make?\n\nAssistant: Humans and dinosaurs didn't live at the same time.\n\nIt is hard to know.\n\nHuman: yes they did\n\nAssistant: you're right.",
    },
    "argilla/distilabel-capybara-dpo-7k-binarized": {
        "source": "Airoboros",
        "conversation": [{"input": "What is 2+2?", "output": "4"}, {"input": "And times 3?", "output": "12"}],
        "original_response": "12",
        "generation_prompt": ["<|system|>..."],
        "raw_generation_responses": ["12", "It is 12."],
        "new_generations": ["12", "It is 12."],
        "prompt": "What is 2+2?",
        "chosen": [user("What is 2+2?"), assistant("4"), user("And times 3?"), assistant("(2+2)*3 = 12.")],
        "rejected": [user("What is 2+2?"), assistant("4"), user("And times 3?"), assistant("7")],
        "rating_chosen": 5,
        "rating_rejected": 1,
        "chosen_model": "gpt-4-1106-preview",
        "rejected_model": "argilla/notus-7b-v1",
    },
    "argilla/distilabel-intel-orca-dpo-pairs": {
        "system": "You are an AI assistant. Provide a detailed answer.",
        "input": "Translate 'hello' to French.",
        "chosen": "Bonjour.",
        "rejected": "Hola.",
        "generations": ["Hola.", "Bonjour."],
        "order": ["rejected", "chosen"],
        "labelling_model": "gpt-4-1106-preview",
        "labelling_prompt": [system("You are a helpful and precise assistant"), user("Evaluate...")],
        "raw_labelling_response": "2 9",
        "rating": [2.0, 9.0],
        "rationale": "The second is correct.",
        "status": "swapped",
        "original_chosen": "Hola.",
        "original_rejected": "Bonjour.",
        "chosen_score": 9.0,
        "in_gsm8k_train": False,
    },
    "argilla/ultrafeedback-binarized-preferences-cleaned": {
        "source": "evol_instruct",
        "prompt": "Can you write a C++ program that prints hello?",
        "chosen": [user("Can you write a C++ program that prints hello?"), assistant("#include <iostream> ...")],
        "chosen-rating": 5.0,
        "chosen-model": "gpt-4",
        "rejected": [user("Can you write a C++ program that prints hello?"), assistant("print('hello')")],
        "rejected-rating": 2.0,
        "rejected-model": "llama-2-7b-chat",
    },
    "jondurbin/truthy-dpo-v0.1": {
        "id": "04c275bf738fd391b7fe25e25fe7bed3",
        "source": "truthy_dpo",
        "system": "You are an unbiased, uncensored, helpful assistant.",
        "prompt": "What's the nearest national park to you?",
        "chosen": "As an AI, I don't have a physical location.",
        "rejected": "The nearest national park to me is Yosemite.",
    },
    "HuggingFaceH4/ultrafeedback_binarized": {
        "prompt": "how can i develop a habit of drawing daily",
        "prompt_id": "086b3e24f29b8956a01059f79c56db35d118a06fb6b844b095737d042795cd43",
        "chosen": [user("how can i develop a habit of drawing daily"), assistant("Start small: ten minutes a day.")],
        "rejected": [user("how can i develop a habit of drawing daily"), assistant("Just draw.")],
        "messages": [user("how can i develop a habit of drawing daily"), assistant("Start small: ten minutes a day.")],
        "score_chosen": 8.5,
        "score_rejected": 5.0,
    },
    "Intel/orca_dpo_pairs": {
        "system": "",
        "question": "You will be given a definition of a task first. Is 7 prime?",
        "chosen": "Yes, 7 is prime: its only divisors are 1 and 7.",
        "rejected": "No.",
    },
}

EXPECTED = {  # (prompt, chosen, rejected) after preprocessing and to_preference_pair
    "shareAI/DPO-zh-en-emoji": (
        [user("一个完整的工程项目管理流程包括什么？")],
        [assistant("🤔 项目管理流程包括启动、计划、执行、监控和收尾 😂")],
        [assistant("My fellow wizarding friend! 🧙 A complete project management process, you ask?")],
    ),
    "trl-lib/ultrafeedback_binarized": (
        [user("Use the pygame library to write a version of snake")],
        [assistant("Sure! Here is a snake game: ...")], [assistant("I cannot write code.")],
    ),
    "mlabonne/orpo-dpo-mix-40k": ([user("Name three primary colors.")], [assistant("Red, yellow and blue.")], [assistant("Green.")]),
    "Anthropic/hh-rlhf": (
        [user("What kind of noises did dinosaurs make?"),
         assistant("Humans and dinosaurs didn't live at the same time.\n\nIt is hard to know."), user("yes they did")],
        [assistant("to guess, and that would probably require lots of reading.")], [assistant("you're right.")],
    ),
    "argilla/distilabel-capybara-dpo-7k-binarized": (
        [user("What is 2+2?"), assistant("4"), user("And times 3?")], [assistant("(2+2)*3 = 12.")], [assistant("7")],
    ),
    "argilla/distilabel-intel-orca-dpo-pairs": (
        [system("You are an AI assistant. Provide a detailed answer."), user("Translate 'hello' to French.")],
        [assistant("Bonjour.")], [assistant("Hola.")],
    ),
    "argilla/ultrafeedback-binarized-preferences-cleaned": (
        [user("Can you write a C++ program that prints hello?")], [assistant("#include <iostream> ...")], [assistant("print('hello')")],
    ),
    "jondurbin/truthy-dpo-v0.1": (
        [system("You are an unbiased, uncensored, helpful assistant."), user("What's the nearest national park to you?")],
        [assistant("As an AI, I don't have a physical location.")], [assistant("The nearest national park to me is Yosemite.")],
    ),
    "HuggingFaceH4/ultrafeedback_binarized": (
        [user("how can i develop a habit of drawing daily")], [assistant("Start small: ten minutes a day.")], [assistant("Just draw.")],
    ),
    "Intel/orca_dpo_pairs": (
        [user("You will be given a definition of a task first. Is 7 prime?")],
        [assistant("Yes, 7 is prime: its only divisors are 1 and 7.")], [assistant("No.")],
    ),
}


LIST_SETS = {"openbmb/UltraFeedback"}  # list rows, tested in test_lists.py


def test_every_entry_has_a_test_row_and_its_documented_columns():
    from .test_lists import UF_RAW

    hub_ids = {e.hub_id for e in registry.REGISTRY.values()}
    assert hub_ids == set(RAW_ROWS) | LIST_SETS == set(EXPECTED) | LIST_SETS
    for entry in registry.REGISTRY.values():
        raw = UF_RAW if entry.hub_id in LIST_SETS else RAW_ROWS[entry.hub_id]
        assert set(entry.raw_columns) <= set(raw), entry.name


@pytest.mark.parametrize("hub_id", sorted(RAW_ROWS))
def test_preprocessor_gives_the_expected_pair(hub_id):
    entry = registry.lookup(hub_id)
    row = entry.preprocess(RAW_ROWS[hub_id])
    pair = to_preference_pair(row, 0)
    assert (pair.prompt, pair.chosen, pair.rejected) == EXPECTED[hub_id]
    assert pair.is_conversational


def test_intel_orca_needs_its_preprocessor():
    """Without it, 'question' is not a prompt column: the row reads as an implicit-prompt pair and fails."""
    from preftune.errors import DataError

    with pytest.raises(DataError, match="no prompt can be extracted"):
        to_preference_pair(RAW_ROWS["Intel/orca_dpo_pairs"], 0)


def test_lookup_by_name_alias_and_hub_id_case_insensitive():
    entry = registry.REGISTRY["hh-rlhf"]
    assert registry.lookup("hh-rlhf") is entry
    assert registry.lookup("anthropic/HH-RLHF") is entry
    assert registry.lookup("hjh0119/shareAI-Llama3-DPO-zh-en-emoji").name == "shareai-llama3-dpo-zh-en-emoji"
    assert registry.lookup("someone/else") is None
    assert "hh-rlhf" in registry.suggest("hh-rlfh")


def test_splits_of_h4_and_emoji_files():
    h4 = registry.lookup("HuggingFaceH4/ultrafeedback_binarized")
    assert (h4.train_split, h4.test_split) == ("train_prefs", "test_prefs")
    emoji = registry.lookup("shareai-llama3-dpo-zh-en-emoji")
    assert emoji.data_files and all(f.endswith(".jsonl") and "_dpo_" in f for f in emoji.data_files)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("\n\nHuman: hi\n\nAssistant: hello", [user("hi"), assistant("hello")]),
        ("Human: hi\n\nAssistant: hello", [user("hi"), assistant("hello")]),  # no leading blank line
        ("\n\nHuman: a\n\nb\n\nAssistant: c\n\nHuman: d\n\nAssistant:", [user("a\n\nb"), assistant("c"), user("d"), assistant("")]),
        ("\n\nHuman: I said Human: twice\n\nAssistant: ok", [user("I said Human: twice"), assistant("ok")]),
    ],
)
def test_hh_transcripts(text, expected):
    assert registry.hh_transcript_to_messages(text) == expected


def test_hh_row_with_empty_last_reply_is_a_bad_row_not_a_crash():
    from preftune.errors import DataError

    row = registry.lookup("hh-rlhf").preprocess({"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant:"})
    with pytest.raises(DataError, match="row 5: field 'rejected'"):
        to_preference_pair(row, 5)
    assert registry.hh_transcript_to_messages(None) is None
