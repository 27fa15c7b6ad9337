"""The invert job's TFDS input (`config.data.tfds_name`: ganinv_jax/jobs/sources.py TfdsSource)
on a REAL prepared TFDS dataset: a GeneratorBasedBuilder defined here writes 16 + 5 small
images into a tmp data_dir with `download_and_prepare` (nothing is downloaded), and the source
reads them back through `builder.as_dataset` -- per item (`load_prepared`) and per contiguous
id range (`load_many`, what the job calls) -- with the right pixels, shape, dtype and order.

(test_invert_job.py covers only the offline Fashion-MNIST fallback, which never touches TFDS.)
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds  # a runtime dependency (pyproject): never skipped

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_invert_job_support as support  # noqa: E402

from ganinv_jax.jobs import sources  # noqa: E402

NAME = "ganinv_test_tiny_images"
RES = 16
SPLITS = {"train": 16, "test": 5}


def _image(split: str, i: int) -> np.ndarray:
    """A distinct, recognizable uint8 [RES, RES, 3] image per (split, index)."""
    rng = np.random.default_rng(1000 * list(SPLITS).index(split) + i)
    img = rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8)
    img[0, 0] = (i, list(SPLITS).index(split), 7)  # the id, readable in the pixels
    return img


class GaninvTestTinyImages(tfds.core.GeneratorBasedBuilder):
    """16 train / 5 test images of RES x RES x 3, stored in generation order."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "test fixture"}

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(RES, RES, 3)),
                    "label": tfds.features.ClassLabel(num_classes=16),
                }
            ),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split, n) for split, n in SPLITS.items()}

    def _generate_examples(self, split, n):
        for i in range(n):
            yield i, {"image": _image(split, i), "label": i % 16}


assert GaninvTestTinyImages.name == NAME


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tfds"))
    builder = GaninvTestTinyImages(data_dir=root)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
        )
    )
    assert builder.is_prepared()
    return root


def _expected(split, ids):
    return np.stack([_image(split, i) for i in ids]).astype(np.float32) / 127.5 - 1.0


def test_reads_prepared_dataset_in_order(data_dir):
    src = sources.TfdsSource(NAME, "train", data_dir=data_dir)
    assert src._array is None and src._builder is not None  # the real TFDS path
    assert len(src) == 16
    assert src.paths[3] == f"tfds:{NAME}/train[3]"
    pre = sources.Preprocess(RES, 3)
    # one item at a time: as_dataset(split='train[i:i+1]')
    for i in (0, 5, 15):
        img, why = src.load_prepared(i, pre)
        assert why == "" and img.dtype == np.float32 and img.shape == (RES, RES, 3)
        np.testing.assert_allclose(img, _expected("train", [i])[0], rtol=0, atol=1e-6)
    # a host's contiguous shard of a chunk: one as_dataset(split='train[lo:hi]') pass
    ids = list(range(4, 12))
    got = src.load_many(ids, pre)
    assert [why for _, why in got] == [""] * len(ids)
    imgs = np.stack([img for img, _ in got])
    assert imgs.shape == (8, RES, RES, 3) and imgs.dtype == np.float32
    np.testing.assert_allclose(imgs, _expected("train", ids), rtol=0, atol=1e-6)
    # ... equal to the per-item reads, and the order is TFDS's canonical order of the split
    canonical = [
        ex["image"]
        for ex in tfds.as_numpy(tfds.builder(NAME, data_dir=data_dir).as_dataset(split="train"))
    ]
    np.testing.assert_array_equal(
        np.stack(canonical)[ids], np.stack([_image("train", i) for i in ids])
    )


def test_split_limit_and_resize_through_the_job_config(data_dir):
    """What a user sets: --config.data.tfds_name / .split / .limit / .tfds_data_dir."""
    cfg = support.job_config(
        "default",
        data__tfds_name=NAME,
        data__split="test",
        data__limit=3,
        data__tfds_data_dir=data_dir,
    )
    src = sources.open_source(cfg.data)
    assert isinstance(src, sources.TfdsSource) and len(src) == 3
    assert src.describe() == f"tfds:{NAME}:test"
    got = src.load_many([0, 1, 2], sources.Preprocess(RES, 3))
    np.testing.assert_allclose(
        np.stack([g for g, _ in got]), _expected("test", [0, 1, 2]), rtol=0, atol=1e-6
    )
    # G's resolution and channels: 8x8 gray from the 16x16 RGB images
    small, why = src.load_prepared(1, sources.Preprocess(8, 1))
    assert why == "" and small.shape == (8, 8, 1) and small.dtype == np.float32
    assert -1.0 <= small.min() and small.max() <= 1.0 and small.std() > 0.05
    # the listing is stable (a resumed run must see the same items) and split-specific
    again = sources.open_source(cfg.data)
    assert again.fingerprint() == src.fingerprint()
    train = sources.TfdsSource(NAME, "train", limit=3, data_dir=data_dir)
    assert train.fingerprint() != src.fingerprint()


def test_missing_split_and_unprepared_dataset_fail_fast(data_dir, tmp_path):
    with pytest.raises(sources.SourceError, match="validation"):
        sources.TfdsSource(NAME, "validation", data_dir=data_dir)
    # registered but not prepared in that data_dir: download=False, nothing is fetched
    with pytest.raises(sources.SourceError, match="not prepared"):
        sources.TfdsSource(NAME, "train", data_dir=str(tmp_path / "empty"))
