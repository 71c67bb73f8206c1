"""A tiny TFDS dataset built locally (ArrayRecord, no TensorFlow, no network) for the data tests."""

import os
import tempfile

import numpy as np
import tensorflow_datasets as tfds


def tiny_text(i: int) -> str:
    """The text of example i (lengths vary, some non-ASCII)."""
    return f"document {i}: " + "tökens ✓ " * (i % 5 + 1)


class TinyCorpus(tfds.core.GeneratorBasedBuilder):
    """``tiny_corpus``: "train" holds examples 0..29, "test" 30..37; features text and n."""

    VERSION = tfds.core.Version("1.0.0")
    code_path = None  # defined in a test helper: no source folder to look up checksums in

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
            {"text": tfds.features.Text(), "n": np.int32}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(range(30)), "test": self._generate_examples(range(30, 38))}

    def _generate_examples(self, ids):
        for i in ids:
            yield i, {"text": tiny_text(i), "n": i}


def build(data_dir: str) -> None:
    """Write ``tiny_corpus`` under ``data_dir`` as ArrayRecord files.

    A new builder (no dataset_info.json yet) makes an empty ``tempfile.mkdtemp("tfds")`` folder for
    metadata it would fetch from GCS, and never removes it (``DatasetInfo.initialize_from_bucket``):
    tempfile's folder is pointed into ``data_dir`` meanwhile, so no test leaves it in the system's /tmp.
    """
    scratch = os.path.join(data_dir, ".tmp")
    os.makedirs(scratch, exist_ok=True)
    saved, tempfile.tempdir = tempfile.tempdir, scratch
    try:
        TinyCorpus(data_dir=data_dir, file_format="array_record").download_and_prepare()
    finally:
        tempfile.tempdir = saved
