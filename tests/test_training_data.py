"""The training data pipeline: page sources, splitting by rank and worker, bad data, pair filtering, resume, cache."""
import hashlib
import io
import json
import os
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from training.data import (
    BadImage,
    DataPosition,
    DataStats,
    EmbedCache,
    PairDataset,
    assign_units,
    decode_image,
    embed_dataset,
    make_loader,
    open_source,
    pair_verdict,
)
from training.data.cache import CACHE_FORMAT, shard_prefix
from training.data.example_pages import write_example_pages
from training.data.sources import DataError
from training.data.writers import write_manifest, write_tar_shards

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def pages_root(tmp_path_factory):
    """Real photos (skimage) as 8 pages of 2-4 crops, plus a truncated JPEG, noise named .png, a 1x1 image and a
    one-image page."""
    root = tmp_path_factory.mktemp("data") / "pages"
    info = write_example_pages(str(root), num_pages=8, size=64, with_bad_files=True)
    return root, info


def _content(source) -> dict:
    """{page key: sorted sha1 of its images' bytes}: what a page is, whatever the format."""
    out = {}
    for page in source.iter_pages():
        digests = []
        for image in page.images:
            data = image.data if image.data is not None else open(image.path, "rb").read()
            digests.append(hashlib.sha1(data).hexdigest())
        out[page.key] = sorted(digests)
    return out


def test_folder_manifest_and_tar_sources_give_the_same_pages(pages_root, tmp_path):
    root, info = pages_root
    folder = open_source(str(root))
    assert folder.kind == "pages"
    expected = _content(folder)
    assert set(expected) == set(info["pages"])
    assert {k: len(v) for k, v in expected.items()} == {k: len(v) for k, v in info["pages"].items()}

    jsonl = write_manifest(folder, str(tmp_path / "pages.jsonl"))
    csv_path = write_manifest(folder, str(tmp_path / "pages.csv"))
    shards = write_tar_shards(folder, str(tmp_path / "shards"), num_shards=3)
    specs = [jsonl, csv_path, str(tmp_path / "shards"), str(tmp_path / "shards" / "pages-{00000..00002}.tar"),
             str(tmp_path / "shards" / "*.tar")]
    for spec in specs:
        source = open_source(spec)
        assert _content(source) == expected, spec
    assert open_source(str(tmp_path / "shards")).num_units == len(shards) == 3


def test_tar_pages_by_folder_and_by_json_key(pages_root, tmp_path):
    root, _ = pages_root
    folder = open_source(str(root))
    expected = _content(folder)
    # Folder-style members (`<page>/<file>`) grouped with page_from="dir".
    path = tmp_path / "dirs.tar"
    with tarfile.open(path, "w") as tar:
        for page in folder.iter_pages():
            for image in page.images:
                tar.add(image.path, arcname=f"{page.key}/{os.path.basename(image.path)}")
    assert _content(open_source(str(path), tar_page_from="dir")) == expected
    # One image per WebDataset sample, the page named in each sample's json: consecutive samples make one page.
    path = tmp_path / "samples.tar"
    with tarfile.open(path, "w") as tar:
        n = 0
        for page in folder.iter_pages():
            for image in page.images:
                for name, data in [(f"s{n:05d}.jpg", open(image.path, "rb").read()),
                                   (f"s{n:05d}.json", json.dumps({"page": page.key}).encode())]:
                    member = tarfile.TarInfo(name)
                    member.size = len(data)
                    tar.addfile(member, io.BytesIO(data))
                n += 1
    assert _content(open_source(str(path))) == expected


def test_manifest_errors_name_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"page": "a", "path": "x.jpg"}\n{"page": "b"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2.*path"):
        open_source(str(bad))
    with pytest.raises(DataError, match="does not exist"):
        open_source(str(tmp_path / "nowhere"))


@pytest.mark.parametrize("num_units", [2, 3, 5, 8, 11])
@pytest.mark.parametrize("world,workers", [(1, 1), (1, 3), (2, 1), (2, 2), (2, 3)])
def test_shard_split_covers_each_shard_exactly_once(num_units, world, workers):
    for epoch in range(3):
        seen = []
        for rank in range(world):
            for worker in range(workers):
                seen += assign_units(num_units, epoch, 7, rank, world, worker, workers)
        assert sorted(seen) == list(range(num_units))
    orders = {tuple(assign_units(num_units, e, 7, 0, 1, 0, 1)) for e in range(4)}
    assert num_units < 3 or len(orders) > 1  # reshuffled each epoch


def test_page_split_pads_so_every_rank_gets_the_same_count():
    for num_units, world in [(5, 2), (7, 3), (2, 4)]:
        counts = [len(assign_units(num_units, 0, 0, r, world, 0, 1, pad_to_world=True)) for r in range(world)]
        assert len(set(counts)) == 1 and counts[0] >= 1


def test_tar_stream_split_by_rank_and_worker_reads_each_page_once(pages_root, tmp_path):
    root, _ = pages_root
    folder = open_source(str(root))
    write_tar_shards(folder, str(tmp_path / "shards"), num_shards=5)
    source = open_source(str(tmp_path / "shards"))
    pages_with_a_good_image = {p.key for p in folder.iter_pages()}
    seen = []
    for rank in range(2):
        dataset = PairDataset(source, resolution=32, pairing="reconstruct", cond_size=32, rank=rank, world_size=2,
                              epochs=1, min_image_size=16)
        for worker in range(2):
            seen += [s["page"] for s in dataset.iter_samples(worker, 2, DataStats()) if not s.get("empty")]
    assert sorted(seen) == sorted(pages_with_a_good_image)
    with pytest.raises(DataError, match="cannot be split between 8 processes"):
        PairDataset(source, resolution=32, cond_size=32, world_size=8)


def test_dataloader_workers_carry_samples_and_counts(pages_root):
    root, info = pages_root
    dataset = PairDataset(open_source(str(root)), resolution=32, cond_size=48, epochs=2, pairs_per_page=1)
    position = DataPosition(world_size=1, num_workers=2)
    targets = 0
    for batch in make_loader(dataset, batch_size=3, num_workers=2):
        position.update(batch)
        if not batch.get("empty"):
            assert batch["target"].shape[1:] == (3, 32, 32) and batch["cond"].shape[1:] == (3, 48, 48)
            assert batch["target"].min() >= -1 and batch["target"].max() <= 1
            targets += batch["target"].shape[0]
    counts = position.stats.counts
    assert counts["pages_seen"] == 2 * len(info["pages"])
    assert counts["pairs_used"] == targets > 0
    assert set(position.positions) == {0, 1}


def test_bad_images_are_skipped_and_counted(pages_root):
    root, info = pages_root
    for name in info["bad"]:
        with pytest.raises(BadImage):
            decode_image(str(root / name), min_size=16)
    assert decode_image(str(root / "00_astronaut/0.jpg"), 16).shape == (3, 64, 64)

    # Many pairs per page: every image gets decoded, so every bad one is met.
    dataset = PairDataset(open_source(str(root)), resolution=32, cond_size=32, epochs=1, pairs_per_page=50)
    stats = DataStats()
    samples = [s for s in dataset.iter_samples(0, 1, stats) if not s.get("empty")]
    c = stats.counts
    assert c["pages_one_image"] == 1
    assert c["images_unreadable"] == 2 and c["images_too_small"] == 1
    assert set(stats.bad_files) == set(info["bad"])
    good = {k: len(v) - sum(f"{k}/{f}" in info["bad"] for f in v) for k, v in info["pages"].items()}
    expected_pairs = sum(n * (n - 1) for k, n in good.items() if len(info["pages"][k]) > 1)
    assert c["pairs_used"] == len(samples) == expected_pairs
    assert all(s["page"] != "zz_single" for s in samples)
    report = stats.report()
    assert "pages_one_image: 1" in report and info["bad"][0] in report


def test_resume_continues_exactly_after_the_last_consumed_sample(pages_root):
    root, _ = pages_root
    source = open_source(str(root))

    def run(resume_state=None, n=None):
        dataset = PairDataset(source, resolution=32, cond_size=32, pairs_per_page=2, seed=3)
        dataset.set_resume_state(resume_state, num_workers=0)
        stats = DataStats()
        out = []
        for sample in dataset.iter_samples(0, 1, stats):
            if not sample.get("empty"):
                out.append(sample)
            if len(out) == n:
                break
        return out

    straight = run(n=40)
    position = DataPosition(world_size=1, num_workers=0)
    for sample in straight[:17]:
        position.update({"worker": 0, "position": sample["position"], "stats": sample["stats"]})
    resumed = run(position.state(), n=23)
    assert [s["position"] for s in resumed] == [s["position"] for s in straight[17:]]
    for a, b in zip(resumed, straight[17:]):
        assert torch.equal(a["target"], b["target"]) and torch.equal(a["cond"], b["cond"])
    # Another topology cannot be mapped: the data restarts at the next epoch instead.
    dataset = PairDataset(source, resolution=32, cond_size=32)
    dataset.set_resume_state(position.state(), num_workers=4, log=lambda m: None)
    assert dataset.resume_epoch == straight[16]["position"][0] + 1 and not dataset.resume_positions


def _write_cache(root, vectors: dict, encoder_id="test:enc", token_dim=4, num_tokens=2):
    os.makedirs(root, exist_ok=True)
    ids = sorted(vectors)
    pooled = torch.stack([torch.tensor(vectors[i], dtype=torch.float32) for i in ids])
    tokens = torch.zeros(len(ids), num_tokens, token_dim)
    name = f"{shard_prefix(0, 1)}-0000.safetensors"
    save_file({"tokens": tokens, "pooled": pooled}, os.path.join(root, name))
    info = {"encoder_id": encoder_id, "token_dim": token_dim, "pooled_dim": pooled.shape[1], "num_tokens": num_tokens}
    with open(os.path.join(root, "cache.json"), "w") as f:
        json.dump({"format": CACHE_FORMAT, "version": 1, "encoder": info, "num_shards": 1, "dtype": "float32"}, f)
    with open(os.path.join(root, f"{shard_prefix(0, 1)}.index.json"), "w") as f:
        json.dump({"shard": 0, "num_shards": 1, "files": [{"file": name, "ids": ids}], "skipped": {}}, f)


def test_pair_filtering_by_pooled_similarity_counts(tmp_path):
    assert pair_verdict(0.99, 0.3, 0.95) == "pairs_near_duplicate"
    assert pair_verdict(0.1, 0.3, 0.95) == "pairs_unrelated"
    assert pair_verdict(0.6, 0.3, 0.95) is None and pair_verdict(0.99, None, None) is None

    root = tmp_path / "pages"
    rng = np.random.default_rng(0)
    vectors = {  # cosine: dup 0.9999, far 0.0, good 0.6
        "dup/0.png": [1, 0, 0, 0], "dup/1.png": [1, 0.01, 0, 0],
        "far/0.png": [0, 1, 0, 0], "far/1.png": [0, 0, 1, 0],
        "good/0.png": [1, 0, 0, 0], "good/1.png": [0.6, 0.8, 0, 0],
        "good/2.png": [0, 0, 0, 1],  # unrelated to both others
    }
    for image_id in vectors:
        os.makedirs(root / os.path.dirname(image_id), exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / image_id)
    os.makedirs(root / "uncached")
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / "uncached" / f"{i}.png")
    _write_cache(str(tmp_path / "cache"), vectors)
    cache = EmbedCache(str(tmp_path / "cache"))
    dataset = PairDataset(open_source(str(root)), resolution=32, cache=cache, epochs=1, pairs_per_page=10,
                          filter_min_similarity=0.3, filter_max_similarity=0.95)
    stats = DataStats()
    samples = [s for s in dataset.iter_samples(0, 1, stats) if not s.get("empty")]
    c = stats.counts
    # dup: both orders near-duplicates; far: both unrelated; good: 0<->1 kept (2 orders), 4 unrelated with 2.
    assert c["pairs_near_duplicate"] == 2
    assert c["pairs_unrelated"] == 2 + 4
    assert c["pairs_used"] == len(samples) == 2
    assert {s["page"] for s in samples} == {"good"}
    assert c["pages_without_pair"] == 3  # dup, far, and uncached (no image in the cache)
    assert c["images_missing_from_cache"] == 2
    assert samples[0]["tokens"].shape == (2, 4) and samples[0]["pooled"].shape == (4,)


@pytest.mark.slow
def test_embed_cache_sharded_matches_the_encoder(pages_root, tmp_path):
    from semantica_core.encoders import export_encoder

    from training.data import condition_input, fit_square

    root, info = pages_root
    encoder = export_encoder("resnet10t", str(tmp_path / "enc.safetensors"), random=True, image_size=64)
    source = open_source(str(root))
    out = str(tmp_path / "cache")
    for shard in range(2):
        embed_dataset(source, encoder, out, shard=shard, num_shards=2, batch_size=4, num_workers=0,
                      dtype="float32", progress=False, min_image_size=16, log=lambda m: None)
    cache = EmbedCache(out)
    all_ids = {f"{k}/{f}" for k, files in info["pages"].items() for f in files}
    assert set(cache.rows) == all_ids - set(info["bad"])
    assert set(cache.skipped) == set(info["bad"]) and not cache.missing_shards
    image_id = "00_astronaut/0.jpg"
    size, crop = condition_input(encoder)
    direct = encoder(fit_square(decode_image(str(root / image_id)), size, crop)[None])
    tokens, pooled = cache.get(image_id)
    assert torch.allclose(tokens, direct.tokens[0], atol=1e-4) and torch.allclose(pooled, direct.pooled[0], atol=1e-4)
    with pytest.raises(DataError, match="another encoder or shard count"):
        embed_dataset(source, encoder, out, shard=0, num_shards=3, progress=False, log=lambda m: None)
