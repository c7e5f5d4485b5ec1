import pytest

from .tiny_tokenizers import build, save_and_load


@pytest.fixture(scope="session")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    return {kind: save_and_load(build(kind), root / kind) for kind in ("plain", "llama3", "chatml")}


@pytest.fixture(scope="session")
def plain(tokenizers):
    return tokenizers["plain"]


@pytest.fixture(scope="session")
def llama3(tokenizers):
    return tokenizers["llama3"]


@pytest.fixture(scope="session")
def chatml(tokenizers):
    return tokenizers["chatml"]
