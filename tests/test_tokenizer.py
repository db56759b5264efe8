import importlib.util
import json

import pytest
import torch

from sd.models.tokenizer import EOS, Tokenizer, TokenizerError, load_tokenizer, openai_bpe_path, split_words
from tests.prompts import prompts

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def openai():
    """OpenAI's own SimpleTokenizer (simple_tokenizer.py, shipped beside the vocabulary file)."""
    pytest.importorskip("ftfy")
    pytest.importorskip("regex")
    try:
        path = openai_bpe_path()
    except TokenizerError as e:
        pytest.skip(str(e))
    spec = importlib.util.spec_from_file_location("openai_simple_tokenizer", path.parent / "simple_tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SimpleTokenizer(str(path))


@pytest.fixture(scope="module")
def hf_files(tmp_path_factory, openai):
    """vocab.json + merges.txt written from OpenAI's tokenizer (not ours), as SD 1.5's tokenizer/ holds them."""
    folder = tmp_path_factory.mktemp("model") / "tokenizer"
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(openai.encoder))
    merges = sorted(openai.bpe_ranks, key=openai.bpe_ranks.get)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"pad_token": EOS, "model_max_length": 77}))
    return folder


def test_vocabulary_is_openais(openai):
    tok = load_tokenizer()
    assert tok.vocab == openai.encoder and tok.ranks == openai.bpe_ranks
    assert len(tok.vocab) == 49408 and tok.bos == 49406 and tok.eos == 49407 and tok.pad == 49407
    assert tok.vocab["!"] == 0


def test_same_tokens_as_openai_where_ftfy_changes_nothing(openai):
    """OpenAI's tokenizer also runs ftfy.fix_text (curly quotes, ligatures); transformers' does not,
    and we follow transformers. Where ftfy leaves a prompt alone, all three agree."""
    import ftfy
    ours = load_tokenizer()
    ps = [p for p in prompts() if ftfy.fix_text(p) == p]
    assert len(ps) > 150
    assert [ours.encode(p) for p in ps] == [openai.encode(p) for p in ps]


def test_same_ids_as_the_reference_on_varied_prompts(hf_files):
    ref = transformers.CLIPTokenizer(str(hf_files / "vocab.json"), str(hf_files / "merges.txt"))
    ours = load_tokenizer(hf_files.parent)          # the model folder, through tokenizer/
    ps = prompts()
    assert len(ps) >= 200
    expected = ref(ps, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    got = ours(ps)
    assert got.shape == (len(ps), 77) and got.dtype == torch.long
    bad = [(p, e.tolist(), g.tolist()) for p, e, g in zip(ps, expected, got) if not torch.equal(e, g)]
    assert not bad, bad[:3]


def test_tokenizer_json_as_transformers_5_saves_it(hf_files, tmp_path):
    """transformers 5 writes tokenizer/tokenizer.json only (no vocab.json, merges.txt)."""
    ref = transformers.CLIPTokenizer(str(hf_files / "vocab.json"), str(hf_files / "merges.txt"))
    ref.save_pretrained(tmp_path / "model" / "tokenizer")
    assert not (tmp_path / "model" / "tokenizer" / "vocab.json").exists()
    ours = load_tokenizer(tmp_path / "model")
    ps = prompts()
    expected = ref(ps, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(ours(ps), expected)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordPiece"}}))
    with pytest.raises(TokenizerError, match="not a CLIP BPE tokenizer \\(model type 'WordPiece'"):
        load_tokenizer(tmp_path / "bad")


def test_padding_follows_the_tokenizer_config(hf_files, tmp_path):
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    for name in ("vocab.json", "merges.txt"):
        (folder / name).write_text((hf_files / name).read_text())
    (folder / "special_tokens_map.json").write_text(json.dumps({"pad_token": {"content": "!"}}))   # SD 2 style
    ours = load_tokenizer(folder)
    ref = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="!")
    ids = ours(["a cat"])[0]
    assert ids[4:].eq(0).all() and ids.tolist() == ref("a cat", padding="max_length", max_length=77).input_ids


def test_long_prompts_are_truncated_with_eos_last(hf_files):
    ids = load_tokenizer()(["cat " * 200])[0]
    assert ids[0] == 49406 and ids[-1] == 49407 and (ids[1:-1] != 49407).all()


def test_split_words():
    assert split_words("it's 42 cats!!") == ["it", "'s", "4", "2", "cats", "!!"]
    assert split_words("  ") == []


def test_errors(tmp_path):
    with pytest.raises(TokenizerError, match="no such file or folder"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(TokenizerError, match="no tokenizer/vocab.json and merges.txt"):
        load_tokenizer(tmp_path)
    with pytest.raises(TokenizerError, match="prompts must be strings"):
        Tokenizer({"<|startoftext|>": 0, "<|endoftext|>": 1}, [])([3])
    with pytest.raises(TokenizerError, match="not in the vocabulary"):
        Tokenizer({"a": 0}, [])
