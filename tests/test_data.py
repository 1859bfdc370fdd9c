"""Packed datasets, token memmaps and the data module."""

import json
import os

import numpy as np
import pytest
import torch

from bllama.data import (
    GepetoDataset,
    JsonlDataset,
    PackedDataset,
    ShakespeareDataset,
    StreamDataset,
    StreamSampler,
    TextDataModule,
    TokenDataset,
    prepare_tokens,
    token_dtype,
    tokenize_files,
)

SHAKESPEARE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "data",
                           "tinyshakespeare.txt")  # shipped with the repository

DOCS = [
    "First Citizen:\nBefore we proceed any further, hear me speak.",
    "All:\nSpeak, speak.",
    "Emoji 🦙 and  double  spaces\tand tabs.",
    "The quick brown fox jumps over the lazy dog. " * 6,
]


def _doc_stream(tok, docs):
    out = []
    for d in docs:
        out += [tok.bos_id] + tok.encode(d, add_bos=False) + [tok.eos_id]
    return out


def _write_parquet(path, docs, column="text"):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({column: docs, "id": list(range(len(docs)))}), path, row_group_size=2)


def _write_jsonl(path, docs, field="text"):
    with open(path, "w", encoding="utf-8") as fh:
        for i, d in enumerate(docs):
            fh.write(json.dumps({field: d, "id": i}) + "\n")


# ---------------------------------------------------------------- packing
def test_blocks_are_shifted_by_exactly_one(sp_tokenizer):
    tokens = np.arange(100, dtype=np.uint16)
    ds = PackedDataset(tokens, max_length=8)
    assert len(ds) == (100 - 1) // 8 == 12
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.dtype == y.dtype == torch.int64
        assert x.shape == y.shape == (8,)
        assert torch.equal(x, torch.arange(i * 8, i * 8 + 8))
        assert torch.equal(y, x + 1)
    # consecutive blocks tile the stream: every token is a label exactly once
    labels = torch.cat([ds[i][1] for i in range(len(ds))])
    assert torch.equal(labels, torch.arange(1, 97))
    assert torch.equal(ds[-1][0], ds[len(ds) - 1][0])
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_too_short_and_empty_errors():
    with pytest.raises(ValueError, match=r"9 tokens.*needs 10"):
        PackedDataset(np.arange(9, dtype=np.uint16), max_length=9)
    PackedDataset(np.arange(10, dtype=np.uint16), max_length=9)  # exactly one block is fine
    with pytest.raises(ValueError, match="empty"):
        PackedDataset(np.zeros(0, dtype=np.uint16), max_length=4)
    with pytest.raises(ValueError, match="max_length"):
        PackedDataset(np.arange(10), max_length=0)


def test_documents_packed_with_bos_eos_no_padding(sp_tokenizer):
    tok = sp_tokenizer
    ds = PackedDataset.from_documents(DOCS, tok, max_length=16)
    expected = _doc_stream(tok, DOCS)
    assert ds.tokens.tolist() == expected
    assert ds.tokens.dtype == np.uint16
    assert int((ds.tokens == tok.eos_id).sum()) == len(DOCS)
    # EOS sits between documents: right before every BOS except the first
    bos_pos = np.flatnonzero(ds.tokens == tok.bos_id)
    assert bos_pos[0] == 0 and all(ds.tokens[p - 1] == tok.eos_id for p in bos_pos[1:])
    # no padding id anywhere: the blocks are plain slices of the stream
    flat = torch.cat([ds[i][0] for i in range(len(ds))]).tolist()
    assert flat == expected[: len(flat)]


def test_documents_without_bos_where_the_tokenizer_adds_none(sp_tokenizer):
    """A tokenizer that adds no BOS (a Hugging Face folder's add_bos_token = false, e.g. SmolLM) packs documents as
    `doc EOS`: fine-tuning sees the token stream the model was trained on."""
    import copy

    tok = copy.copy(sp_tokenizer)
    tok.add_bos = False
    ds = PackedDataset.from_documents(DOCS, tok, max_length=16)
    assert int((ds.tokens == tok.bos_id).sum()) == 0 and int((ds.tokens == tok.eos_id).sum()) == len(DOCS)
    assert ds.tokens.tolist() == [t for t in _doc_stream(sp_tokenizer, DOCS) if t != tok.bos_id]


def test_token_dtype_choice():
    assert token_dtype(32000) == np.uint16
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32
    assert token_dtype(128256) == np.uint32
    with pytest.raises(ValueError):
        token_dtype(0)


# ---------------------------------------------------------------- text files
def test_text_file_matches_whole_text_encoding(sp_tokenizer, tmp_path):
    text = "\n".join(DOCS) * 5 + "\n\n  end\n"
    p = tmp_path / "plays.txt"
    p.write_text(text, encoding="utf-8")
    ds = ShakespeareDataset.from_file(p, sp_tokenizer, max_length=32)
    expected = [1] + sp_tokenizer.encode(text, add_bos=False) + [2]
    assert ds.tokens.tolist() == expected
    assert ds.num_documents == 1
    # streaming in small chunks gives exactly the same tokens (no stray '▁' at cuts)
    chunked = np.concatenate([a for a, _ in tokenize_files([str(p)], sp_tokenizer, chunk_chars=37)])
    assert chunked.tolist() == expected
    # a path to the tokenizer model works as well as the object
    ds2 = ShakespeareDataset(p, sp_tokenizer.model_path, max_length=32)
    assert np.array_equal(ds2.tokens, ds.tokens)


def test_text_file_errors(sp_tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        ShakespeareDataset.from_file(tmp_path / "missing.txt", sp_tokenizer)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"empty.txt.*empty"):
        ShakespeareDataset.from_file(empty, sp_tokenizer)
    short = tmp_path / "short.txt"
    short.write_text("just a few words")
    n = len(sp_tokenizer.encode("just a few words")) + 1
    with pytest.raises(ValueError, match=rf"short.txt.*{n} tokens.*needs 1025"):
        ShakespeareDataset.from_file(short, sp_tokenizer, max_length=1024)
    latin1 = tmp_path / "latin1.txt"  # the codec's own message named only the byte
    latin1.write_bytes("caf\u00e9 au lait\n".encode("latin-1") * 50)
    with pytest.raises(ValueError, match=r"latin1.txt is not UTF-8 text \(invalid continuation byte: byte 0xe9\)"):
        ShakespeareDataset.from_file(latin1, sp_tokenizer)
    from bllama.train.trainer import dataset_from_paths

    with pytest.raises(ValueError, match=r"is a folder: give its files"):  # was "text file not found"
        dataset_from_paths([tmp_path], sp_tokenizer, 16)


def test_tinyshakespeare(sp_tokenizer):
    ds = ShakespeareDataset.from_file(SHAKESPEARE, sp_tokenizer, max_length=256, progress=False)
    assert ds.num_tokens > 300_000 and len(ds) == (ds.num_tokens - 1) // 256
    x, y = ds[len(ds) // 2]
    assert torch.equal(x[1:], y[:-1])
    assert sp_tokenizer.decode(ds[0][0][:30]).startswith("First Citizen")


# ---------------------------------------------------------------- parquet / jsonl
def test_parquet_many_files_and_glob(sp_tokenizer, tmp_path):
    _write_parquet(tmp_path / "a-000.parquet", DOCS[:2])
    _write_parquet(tmp_path / "a-001.parquet", DOCS[2:] + ["", None])
    ds = GepetoDataset(str(tmp_path / "a-*.parquet"), sp_tokenizer, max_length=16)
    assert ds.tokens.tolist() == _doc_stream(sp_tokenizer, DOCS)  # sorted file order, empty rows skipped
    assert ds.num_documents == len(DOCS)
    ds2 = GepetoDataset([tmp_path / "a-000.parquet", tmp_path / "a-001.parquet"], sp_tokenizer, max_length=16)
    assert np.array_equal(ds.tokens, ds2.tokens)


def test_parquet_errors(sp_tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError, match="no files match"):
        GepetoDataset(str(tmp_path / "*.parquet"), sp_tokenizer, max_length=8)
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        GepetoDataset(tmp_path / "nope.parquet", sp_tokenizer, max_length=8)
    _write_parquet(tmp_path / "bad.parquet", DOCS, column="content")
    with pytest.raises(ValueError, match=r"bad.parquet.*'text' column.*content"):
        GepetoDataset(tmp_path / "bad.parquet", sp_tokenizer, max_length=8)
    ds = GepetoDataset(tmp_path / "bad.parquet", sp_tokenizer, max_length=8, text_column="content")
    assert len(ds) > 0
    _write_parquet(tmp_path / "empty.parquet", ["", ""])
    with pytest.raises(ValueError, match=r"empty.parquet.*empty corpus"):
        GepetoDataset(tmp_path / "empty.parquet", sp_tokenizer, max_length=8)
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match="junk.parquet"):
        GepetoDataset(tmp_path / "junk.parquet", sp_tokenizer, max_length=8)


def test_jsonl(sp_tokenizer, tmp_path):
    p = tmp_path / "docs.jsonl"
    _write_jsonl(p, DOCS)
    with open(p, "a") as fh:
        fh.write("\n")  # blank lines are fine
    ds = JsonlDataset(p, sp_tokenizer, max_length=16)
    assert ds.tokens.tolist() == _doc_stream(sp_tokenizer, DOCS)


def test_jsonl_errors(sp_tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError, match="gone.jsonl"):
        JsonlDataset(tmp_path / "gone.jsonl", sp_tokenizer, max_length=8)
    p = tmp_path / "nofield.jsonl"
    _write_jsonl(p, DOCS[:1])
    with open(p, "a") as fh:
        fh.write(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"nofield.jsonl:2: no 'text' field"):
        JsonlDataset(p, sp_tokenizer, max_length=8)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{broken\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: invalid JSON"):
        JsonlDataset(bad, sp_tokenizer, max_length=8)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"empty.jsonl.*empty corpus"):
        JsonlDataset(empty, sp_tokenizer, max_length=8)
    short = tmp_path / "short.jsonl"
    _write_jsonl(short, ["hi"])
    with pytest.raises(ValueError, match=r"short.jsonl.*corpus too short.*tokens"):
        JsonlDataset(short, sp_tokenizer, max_length=64)


# ---------------------------------------------------------------- data module
def _numbered(n_blocks, L=4):
    return PackedDataset(np.arange(n_blocks * L + 1, dtype=np.uint16), max_length=L)


def test_contiguous_split_holds_out_the_tail():
    ds = _numbered(20)
    dm = TextDataModule(ds, batch_size=4, train_test_split=0.9)
    assert list(dm.train_dataset.indices) == list(range(18))
    assert list(dm.val_dataset.indices) == [18, 19]
    train_tokens = set(torch.cat([dm.train_dataset[i][0] for i in range(18)]).tolist())
    val_tokens = set(torch.cat([dm.val_dataset[i][0] for i in range(2)]).tolist())
    assert not train_tokens & val_tokens  # no interleaving: validation text is unseen
    batches = list(dm.val_dataloader())
    assert [b[0].shape for b in batches] == [(2, 4)]
    assert torch.equal(batches[0][0][0], ds[18][0])  # val order is not shuffled
    assert len(list(dm.test_dataloader())) == 1


def test_train_loader_shuffles_deterministically():
    def order(seed):
        dm = TextDataModule(_numbered(20), batch_size=3, seed=seed)
        return torch.cat([x[:, 0] for x, _ in dm.train_dataloader()]).tolist()

    a, b, c = order(1), order(1), order(2)
    assert a == b and a != c
    assert sorted(a) == [i * 4 for i in range(18)]  # each training block once
    assert a != sorted(a)


def test_random_split_is_seeded_and_disjoint():
    ds = _numbered(30)
    d1 = TextDataModule(ds, 4, 0.8, seed=7, split="random")
    d2 = TextDataModule(ds, 4, 0.8, seed=7, split="random")
    d3 = TextDataModule(ds, 4, 0.8, seed=8, split="random")
    assert list(d1.train_dataset.indices) == list(d2.train_dataset.indices)
    assert list(d1.train_dataset.indices) != list(d3.train_dataset.indices)
    assert len(d1.train_dataset) == 24 and len(d1.val_dataset) == 6
    assert sorted(list(d1.train_dataset.indices) + list(d1.val_dataset.indices)) == list(range(30))


def test_datamodule_edge_cases():
    with pytest.raises(ValueError, match="at least 2"):
        TextDataModule(_numbered(1), 2)
    with pytest.raises(ValueError, match="train_test_split"):
        TextDataModule(_numbered(5), 2, train_test_split=0.0)
    with pytest.raises(ValueError, match="split"):
        TextDataModule(_numbered(5), 2, split="interleaved")
    dm = TextDataModule(_numbered(3), 2, train_test_split=0.99)
    assert len(dm.train_dataset) == 2 and len(dm.val_dataset) == 1  # never an empty side
    dm = TextDataModule(_numbered(3), 2, train_test_split=1.0)
    assert len(dm.train_dataset) == 3 and len(dm.val_dataset) == 0
    other = _numbered(2)
    dm = TextDataModule(_numbered(3), 2, val_dataset=other)
    assert dm.train_dataset is not other and dm.val_dataset is other


# ---------------------------------------------------------------- token memmaps
@pytest.fixture()
def token_file(sp_tokenizer, tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("\n".join(DOCS) * 4, encoding="utf-8")
    j = tmp_path / "b.jsonl"
    _write_jsonl(j, DOCS * 3)
    out = tmp_path / "tok" / "train.bin"
    meta = prepare_tokens([a, j], sp_tokenizer, out, progress=False)
    return out, meta, a, j


def test_prepare_tokens_writes_flat_file_and_sidecar(sp_tokenizer, token_file):
    out, meta, a, j = token_file
    expected = ([1] + sp_tokenizer.encode(a.read_text(encoding="utf-8"), add_bos=False) + [2]
                + _doc_stream(sp_tokenizer, DOCS * 3))
    assert meta["dtype"] == "uint16" and meta["count"] == len(expected)
    assert meta["vocab_size"] == sp_tokenizer.vocab_size
    assert meta["tokenizer_checksum"] == sp_tokenizer.checksum()
    assert meta["documents"] == 1 + len(DOCS) * 3
    on_disk = json.loads((out.parent / "train.bin.json").read_text())
    assert on_disk == meta
    assert np.fromfile(out, dtype="<u2").tolist() == expected
    assert out.stat().st_size == 2 * len(expected)
    assert sorted(os.listdir(out.parent)) == ["train.bin", "train.bin.json"]  # no temp files left


def test_prepare_tokens_small_flushes_match(sp_tokenizer, token_file, tmp_path):
    out, meta, a, j = token_file
    out2 = tmp_path / "again.bin"
    prepare_tokens([a, j], sp_tokenizer, out2, progress=False, flush_tokens=7)
    assert out2.read_bytes() == out.read_bytes()


def test_prepare_tokens_uint32_for_big_vocab(tmp_path):
    class BigVocab:
        vocab_size = 100_000
        eos_token_id = 99_999

        def encode(self, text):
            return [70_000 + (ord(c) % 1000) for c in text]

        def decode(self, ids):
            return ""

    src = tmp_path / "d.jsonl"
    _write_jsonl(src, ["abc", "de"])
    meta = prepare_tokens(src, BigVocab(), tmp_path / "big.bin", progress=False)
    assert meta["dtype"] == "uint32" and meta["count"] == 7
    arr = np.fromfile(tmp_path / "big.bin", dtype="<u4")
    assert arr.tolist() == [70_097, 70_098, 70_099, 99_999, 70_100, 70_101, 99_999]
    ds = TokenDataset(tmp_path / "big.bin", max_length=3)
    assert ds[0][0].tolist() == [70_097, 70_098, 70_099]


def test_prepare_tokens_is_atomic(sp_tokenizer, token_file, tmp_path):
    out, meta, a, j = token_file
    before = out.read_bytes(), (out.parent / "train.bin.json").read_text()
    bad = tmp_path / "bad.jsonl"
    _write_jsonl(bad, DOCS * 50)
    with open(bad, "a") as fh:
        fh.write("{not json\n")  # fails after many tokens were already written
    with pytest.raises(ValueError, match="invalid JSON"):
        prepare_tokens([a, bad], sp_tokenizer, out, progress=False, flush_tokens=16)
    # the previous output is untouched and no partial/temp file is left behind
    assert (out.read_bytes(), (out.parent / "train.bin.json").read_text()) == before
    assert sorted(os.listdir(out.parent)) == ["train.bin", "train.bin.json"]
    fresh = tmp_path / "fresh" / "x.bin"
    with pytest.raises(ValueError):
        prepare_tokens([bad], sp_tokenizer, fresh, progress=False, flush_tokens=16)
    assert os.listdir(fresh.parent) == []


def test_prepare_tokens_errors(sp_tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.txt"):
        prepare_tokens(tmp_path / "nothere.txt", sp_tokenizer, tmp_path / "o.bin")
    e = tmp_path / "e.jsonl"
    e.write_text("")
    with pytest.raises(ValueError, match="empty corpus"):
        prepare_tokens(e, sp_tokenizer, tmp_path / "o.bin", progress=False)
    assert not (tmp_path / "o.bin").exists()


def test_token_dataset_sequential_matches_packed(sp_tokenizer, token_file):
    out, meta, *_ = token_file
    seq = TokenDataset(out, max_length=16)
    arr = np.fromfile(out, dtype="<u2")
    packed = PackedDataset(arr, max_length=16)
    assert len(seq) == len(packed) == (meta["count"] - 1) // 16
    for i in (0, 1, len(seq) - 1):
        assert all(torch.equal(a, b) for a, b in zip(seq[i], packed[i]))
    x, y = seq[3]
    assert x.dtype == torch.int64 and torch.equal(x[1:], y[:-1])
    assert seq.vocab_size == sp_tokenizer.vocab_size
    assert TokenDataset(str(out) + ".json", max_length=16).num_tokens == meta["count"]  # sidecar path ok


def test_token_dataset_random_sampling_is_deterministic(token_file):
    out, meta, *_ = token_file
    ds = TokenDataset(out, max_length=16, sampling="random", num_samples=50, seed=3)
    assert len(ds) == 50
    offs = [ds.offset(i) for i in range(50)]
    assert offs == [TokenDataset(out, 16, "random", 50, seed=3).offset(i) for i in range(50)]
    assert offs != [TokenDataset(out, 16, "random", 50, seed=4).offset(i) for i in range(50)]
    assert len(set(offs)) > 25 and any(o % 16 for o in offs)  # not block aligned
    assert all(0 <= o <= meta["count"] - 17 for o in offs)
    arr = np.fromfile(out, dtype="<u2").astype(np.int64)
    x, y = ds[7]
    assert x.tolist() == arr[offs[7]:offs[7] + 16].tolist() and y.tolist() == arr[offs[7] + 1:offs[7] + 17].tolist()
    ds.set_epoch(1)
    assert [ds.offset(i) for i in range(50)] != offs


def test_token_dataset_with_worker_processes(token_file):
    out, *_ = token_file
    ds = TokenDataset(out, max_length=16, sampling="random", num_samples=12, seed=5)
    ds[0]  # opens the memmap in this process; pickling must not carry it
    single = torch.stack([ds[i][0] for i in range(12)])
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    multi = torch.cat([x for x, _ in loader])
    assert torch.equal(single, multi)


def test_token_dataset_errors_and_split(token_file, tmp_path):
    out, meta, *_ = token_file
    with pytest.raises(FileNotFoundError, match="none.bin"):
        TokenDataset(tmp_path / "none.bin", 16)
    bare = tmp_path / "bare.bin"
    bare.write_bytes(out.read_bytes())
    with pytest.raises(FileNotFoundError, match="bare.bin.json"):
        TokenDataset(bare, 16)
    assert len(TokenDataset(bare, 16, dtype="uint16")) == len(TokenDataset(out, 16))
    with pytest.raises(ValueError, match="too short"):
        TokenDataset(out, max_length=meta["count"])
    with pytest.raises(ValueError, match="sampling"):
        TokenDataset(out, 16, sampling="shuffled")
    trunc = tmp_path / "trunc.bin"
    trunc.write_bytes(out.read_bytes()[:-2])
    (tmp_path / "trunc.bin.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="truncated"):
        TokenDataset(trunc, 16)

    full = TokenDataset(out, 16, sampling="random", seed=1)
    train, val = full.split(0.75)
    cut = int(round(meta["count"] * 0.75))
    assert (train.start, train.end, val.start, val.end) == (0, cut, cut, meta["count"])
    assert val.sampling == "sequential" and train.sampling == "random"
    assert all(train.offset(i) + 17 <= cut for i in range(len(train)))
    dm = TextDataModule(full, batch_size=4, train_test_split=0.75)
    assert dm.train_dataset.end == cut and dm.val_dataset.start == cut
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1])


def test_token_split_keeps_a_block_on_each_side(token_file):
    """A file of a few blocks splits like the in-memory datasets (at least one block each side): at 0.9 its
    validation share was short of a block and the file was refused as "corpus too short"."""
    out, meta, *_ = token_file
    length = meta["count"] // 4 - 1  # 4 blocks: 10% of the tokens is under one block
    train, val = TokenDataset(out, length).split(0.9)
    assert len(train) >= 1 and len(val) == 1 and train.end == val.start == meta["count"] - (length + 1)
    with pytest.raises(ValueError, match="too few to split"):
        TokenDataset(out, meta["count"] // 2).split(0.9)


def test_datamodule_drives_a_lightning_fit(tmp_path):
    pl = pytest.importorskip("pytorch_lightning")

    class Bigram(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(200, 200)
            self.seen_val = 0

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.emb(x).flatten(0, 1), y.flatten())

        def validation_step(self, batch, batch_idx):
            self.seen_val += batch[0].shape[0]

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = TextDataModule(_numbered(10, L=8), batch_size=2, train_test_split=0.8, num_workers=0)
    model = Bigram()
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         val_check_interval=2, default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 3 and model.seen_val >= 2


# ---- resumable training stream ------------------------------------------------------------------------------------
def test_stream_passes_are_permutations_and_ranks_partition_the_stream():
    ds = StreamDataset(_numbered(7), seed=3)
    firsts = [int(ds[g][0][0]) // 4 for g in range(21)]  # block index of each sample
    for p in range(3):
        assert sorted(firsts[7 * p:7 * p + 7]) == list(range(7))  # every block once per pass
    assert firsts[:7] != firsts[7:14]  # reshuffled each pass
    assert firsts == [int(StreamDataset(_numbered(7), seed=3)[g][0][0]) // 4 for g in range(21)]  # seeded
    assert firsts != [int(StreamDataset(_numbered(7), seed=4)[g][0][0]) // 4 for g in range(21)]

    ranks = [list(StreamSampler(5, rank=r, world=3)) for r in range(3)]
    assert sorted(sum(ranks, [])) == list(range(15)) and all(len(r) == 5 for r in ranks)
    resumed = [list(StreamSampler(5, rank=r, world=3, start=6)) for r in range(3)]
    assert [r[2:] for r in ranks] == resumed and len(StreamSampler(5, world=3, start=6)) == 5
    with pytest.raises(ValueError, match="multiple"):
        StreamSampler(5, world=3, start=4)


def test_random_token_file_stream_changes_offsets_per_pass(token_file):
    path = token_file[0]
    ds = StreamDataset(TokenDataset(path, max_length=16, sampling="random", seed=1), shuffle=False)
    n = len(ds)
    assert not torch.equal(ds[0][0], ds[n][0])  # same block index, next pass: another random offset
    again = StreamDataset(TokenDataset(path, max_length=16, sampling="random", seed=1), shuffle=False)
    assert torch.equal(ds[n][0], again[n][0]) and torch.equal(ds[0][0], again[0][0])
    # with a text file (`bllama train a.txt b.bin --sampling random`) the .bin sits in a split of a ConcatDataset:
    # it was never told the pass
    text = PackedDataset(np.arange(33, dtype=np.uint16), max_length=16)
    dm = TextDataModule(torch.utils.data.ConcatDataset([text, TokenDataset(path, max_length=16, sampling="random")]),
                        train_test_split=0.9)
    mixed = StreamDataset(dm.train_dataset, shuffle=False)
    n = len(mixed)
    assert not torch.equal(mixed[n - 1][0], mixed[2 * n - 1][0])


def test_resumable_datamodule_continues_where_a_crashed_run_stopped(tmp_path):
    """In one process, through Lightning: a run that crashes after a mid-run checkpoint and is resumed trains on
    exactly the batches of an uninterrupted run (a plain loader would restart the epoch: batches seen twice)."""
    pl = pytest.importorskip("pytorch_lightning")

    class Crash(RuntimeError):
        pass

    class Rec(pl.LightningModule):
        def __init__(self, crash_at=None):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen, self.crash_at = [], crash_at

        def training_step(self, batch, batch_idx):
            if self.global_step == self.crash_at:
                raise Crash()
            self.seen.append(batch[0][:, 0].tolist())
            return self.w.sum() * 0 + batch[0].float().mean() * self.w.sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def run(name, crash_at=None, ckpt=None, resumable=True):
        model = Rec(crash_at)
        dm = TextDataModule(_numbered(5, L=4), batch_size=2, train_test_split=1.0, seed=0, resumable=resumable)
        cb = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / name, save_last=True, save_top_k=0,
                                          every_n_train_steps=2)
        trainer = pl.Trainer(max_steps=7, accelerator="cpu", logger=False, enable_progress_bar=False,
                             enable_model_summary=False, callbacks=[cb], default_root_dir=str(tmp_path))
        try:
            trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
        except Crash:
            pass
        return model.seen

    full = run("full")
    assert len(full) == 7
    first = run("crash", crash_at=5)  # checkpoints after steps 2 and 4, crashes before step 6
    assert first == full[:5]
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = run("resume", ckpt=str(tmp_path / "crash" / "last.ckpt"))
    assert first[:4] + resumed == full
    assert not [w for w in caught if "not resumable" in str(w.message)]
    # the reason for resumable=True: Lightning restarts a plain loader's epoch on resume
    plain = run("plain", crash_at=5, resumable=False)
    assert plain[:4] + run("plain2", ckpt=str(tmp_path / "plain" / "last.ckpt"), resumable=False) != \
        run("plainfull", resumable=False)


# ---------------------------------------------------------------- what real corpora look like
def test_bad_records_name_the_file_and_the_place(sp_tokenizer, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from bllama.train.trainer import dataset_from_paths

    latin1 = tmp_path / "latin1.jsonl"  # the codec's message named neither the file nor the line
    latin1.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"latin1.jsonl:2: not UTF-8 \(invalid continuation byte: byte 0xe9\)"):
        JsonlDataset(latin1, sp_tokenizer, max_length=8)
    arr = tmp_path / "array.jsonl"
    arr.write_text('["a list"]\n')
    with pytest.raises(ValueError, match=r"array.jsonl:1: a JSON list, not an object with a 'text' field"):
        JsonlDataset(arr, sp_tokenizer, max_length=8)
    pretty = tmp_path / "pretty.json"  # .json is read as JSON lines: say so where a whole-file JSON fails
    pretty.write_text(json.dumps([{"text": d} for d in DOCS], indent=2))
    with pytest.raises(ValueError, match=r"pretty.json:1: invalid JSON .*one object per line"):
        JsonlDataset(pretty, sp_tokenizer, max_length=8)
    other = tmp_path / "other.jsonl"
    _write_jsonl(other, DOCS, field="content")
    with pytest.raises(ValueError, match=r"other.jsonl:1: no 'text' field \(fields: 'content', 'id'\).*--text-field"):
        JsonlDataset(other, sp_tokenizer, max_length=8)
    import gzip

    packed = tmp_path / "docs.jsonl.gz"  # was "not UTF-8 text (...: byte 0x8b); convert it, e.g. iconv -f latin1"
    packed.write_bytes(gzip.compress(b'{"text": "hello"}\n'))
    with pytest.raises(ValueError, match=r"docs.jsonl.gz is gzip-compressed; decompress it first \(gunzip -k"):
        dataset_from_paths([packed], sp_tokenizer, 8)
    # an int column of zeros and nulls read as a file of empty documents and was skipped without a word
    _write_parquet(tmp_path / "good.parquet", DOCS)
    pq.write_table(pa.table({"text": pa.array([0, None, 0], pa.int64())}), tmp_path / "ints.parquet")
    with pytest.raises(ValueError, match=r"ints.parquet: column 'text' is int64, not text"):
        GepetoDataset([tmp_path / "good.parquet", tmp_path / "ints.parquet"], sp_tokenizer, max_length=8)
    # a damaged data page said only "Corrupt snappy compressed data."
    big = tmp_path / "big.parquet"
    pq.write_table(pa.table({"text": [f"document number {i}" for i in range(3000)]}), big, compression="snappy")
    data = bytearray(big.read_bytes())
    data[3000:3100] = bytes(100)
    (tmp_path / "damaged.parquet").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"damaged.parquet: not a readable parquet file"):
        GepetoDataset(tmp_path / "damaged.parquet", sp_tokenizer, max_length=8)
    # the types that do hold text are read
    pq.write_table(pa.table({"text": pa.array(DOCS, pa.large_string())}), tmp_path / "large.parquet")
    pq.write_table(pa.table({"text": pa.array(DOCS).dictionary_encode()}), tmp_path / "dict.parquet")
    for name in ("large.parquet", "dict.parquet"):
        ds = GepetoDataset(tmp_path / name, sp_tokenizer, max_length=8)
        assert ds.tokens.tolist() == _doc_stream(sp_tokenizer, DOCS)


def test_text_field_picks_another_field(sp_tokenizer, tmp_path):
    from bllama.cli import build_parser
    from bllama.train.trainer import dataset_from_paths

    _write_jsonl(tmp_path / "c.jsonl", DOCS, field="content")
    _write_parquet(tmp_path / "c.parquet", DOCS[::-1], column="content")
    ds = dataset_from_paths([tmp_path / "c.jsonl", tmp_path / "c.parquet"], sp_tokenizer, 8, text_field="content")
    assert ds.tokens.tolist() == _doc_stream(sp_tokenizer, DOCS + DOCS[::-1])
    for argv in (["train", "c.jsonl"], ["data", "prepare", "c.jsonl", "--tokenizer", "t.model", "-o", "c.bin"]):
        assert build_parser().parse_args(argv + ["--text-field", "content"]).text_field == "content"
    meta = prepare_tokens(tmp_path / "c.jsonl", sp_tokenizer, tmp_path / "c.bin", text_field="content", progress=False)
    assert meta["documents"] == len(DOCS)


def test_training_files_are_packed_into_one_stream(sp_tokenizer, tmp_path):
    """`bllama train a.txt b.jsonl c.parquet` made a dataset per file: a file shorter than a block refused the
    run ("corpus too short") although the files together held many, and every file's partial last block was lost."""
    from bllama.train.trainer import dataset_from_paths

    big, small = tmp_path / "big.txt", tmp_path / "small.txt"
    big.write_text("\n".join(DOCS) * 3, encoding="utf-8")
    small.write_text("a short note\n", encoding="utf-8")
    _write_jsonl(tmp_path / "shard.jsonl", DOCS[:2])
    _write_parquet(tmp_path / "shard.pq", DOCS[2:])
    files = [big, small, tmp_path / "shard.jsonl", tmp_path / "shard.pq"]
    ds = dataset_from_paths(files, sp_tokenizer, 64)
    expected = [t for f in (big, small) for t in [1] + sp_tokenizer.encode(f.read_text(), add_bos=False) + [2]]
    expected += _doc_stream(sp_tokenizer, DOCS)
    assert ds.tokens.tolist() == expected  # in the order given, each document once
    assert len(ds) == (len(expected) - 1) // 64


def test_byte_order_mark_is_not_text(sp_tokenizer, tmp_path):
    p = tmp_path / "windows.txt"  # the U+FEFF was trained on as the first token of the corpus
    p.write_bytes(b"\xef\xbb\xbf" + ("\n".join(DOCS)).encode("utf-8"))
    ds = ShakespeareDataset.from_file(p, sp_tokenizer, max_length=8)
    assert ds.tokens.tolist() == [1] + sp_tokenizer.encode("\n".join(DOCS), add_bos=False) + [2]


def test_a_long_line_is_read_in_pieces(sp_tokenizer, tmp_path):
    """A file of one long line was held and encoded whole: a 19 MB line took 1 GB and time quadratic in its length.
    It is now cut before lone spaces, and the tokens are still those of whole-text encoding."""
    text = " ".join(DOCS).replace("\n", " ") * 20 + " x  y \t z"
    p = tmp_path / "one-line.txt"
    p.write_text(text, encoding="utf-8")
    expected = [1] + sp_tokenizer.encode(text, add_bos=False) + [2]
    pieces = [a for a, _ in tokenize_files([str(p)], sp_tokenizer, chunk_chars=64, progress=False)]
    assert len(pieces) > len(text) // 128  # read in pieces of about chunk_chars, not held whole
    assert np.concatenate(pieces).tolist() == expected
    # no lone space for several chunks: cut anyway, so memory stays bounded
    p.write_text("x" * 2000, encoding="utf-8")
    pieces = [a for a, _ in tokenize_files([str(p)], sp_tokenizer, chunk_chars=64, progress=False)]
    assert len(pieces) > 2000 // (64 * 8)


def test_token_ids_past_the_vocabulary_name_the_file_and_position(token_file, tmp_path):
    out, meta, _, _ = token_file
    bad = tmp_path / "bad.bin"
    data = np.fromfile(out, dtype="<u2")
    data[100] = meta["vocab_size"] + 7  # a damaged file: the embedding failed with "index out of range in self"
    data.tofile(bad)
    (tmp_path / "bad.bin.json").write_text(json.dumps(meta))
    ds = TokenDataset(bad, max_length=16)
    ds[0]
    with pytest.raises(ValueError, match=rf"bad.bin: token {meta['vocab_size'] + 7} at position 100 is outside the "
                                         rf"vocabulary of {meta['vocab_size']}"):
        ds[100 // 16]
    for dtype in ("bogus", "float16"):  # "data type 'bogus' not understood", naming no file; floats read as ids
        (tmp_path / "bad.bin.json").write_text(json.dumps(dict(meta, dtype=dtype)))
        with pytest.raises(ValueError, match=rf"bad.bin.json: token dtype '{dtype}' is not an integer type"):
            TokenDataset(bad, max_length=16)
    (tmp_path / "bare.bin").write_bytes(data.tobytes())
    with pytest.raises(FileNotFoundError, match=r"bare.bin.json.*sidecar.*bllama data prepare"):
        TokenDataset(tmp_path / "bare.bin", max_length=16)


def test_a_token_files_sidecar_among_the_data_is_not_a_corpus(sp_tokenizer, token_file, tmp_path):
    """`bllama train data/*` names corpus.bin and corpus.bin.json: the sidecar was read as JSONL and failed as
    "corpus.bin.json:1: invalid JSON"."""
    from bllama.train.trainer import dataset_from_paths

    out, meta, _, _ = token_file
    sidecar = str(out) + ".json"
    for paths in ([out, sidecar], [sidecar, out], [sidecar]):
        ds = dataset_from_paths(paths, sp_tokenizer, 16)
        assert isinstance(ds, TokenDataset) and ds.num_tokens == meta["count"]
    text = tmp_path / "more.txt"
    text.write_text("\n".join(DOCS), encoding="utf-8")
    ds = dataset_from_paths([text, out, sidecar], sp_tokenizer, 16)
    assert [type(d) for d in ds.datasets] == [PackedDataset, TokenDataset]


@pytest.mark.parametrize("workers", [0, 1])
def test_random_token_blocks_change_each_epoch_of_an_epoch_based_fit(token_file, workers):
    """Under a Trainer with max_epochs nothing told a randomly sampled TokenDataset the epoch: every epoch trained
    on the same offsets. Each epoch now draws its own, the same in worker processes and from run to run."""
    import pytorch_lightning as pl

    out, _, _, _ = token_file

    def fit():
        starts = {}

        class Probe(pl.LightningModule):
            def __init__(self):
                super().__init__()
                self.w = torch.nn.Parameter(torch.zeros(1))

            def training_step(self, batch, i):
                starts.setdefault(self.current_epoch, []).extend(batch[0][:, :4].tolist())
                return (self.w ** 2).sum()

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.1)

        ds = TokenDataset(out, max_length=8, sampling="random", num_samples=12, seed=3)
        dm = TextDataModule(ds, batch_size=4, train_test_split=1.0, num_workers=workers)
        pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, accelerator="cpu").fit(Probe(), dm)
        return starts

    starts = fit()
    assert sorted(starts) == [0, 1, 2] and all(len(v) == 12 for v in starts.values())
    assert sorted(starts[0]) != sorted(starts[1]) != sorted(starts[2])
    assert fit() == starts
