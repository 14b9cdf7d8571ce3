"""Checkpoint integrity: a content checksum catches damaged bytes, and a file whose structure is
wrong gets a :class:`CheckpointError` naming the file and the entry (never a raw AttributeError,
TypeError or KeyError from deep inside the loader)."""
import math

import pytest
import torch

from binarize import checkpoint as ckpt
from binarize import convert
from binarize.finetune.state import STATE_VERSION, read_training_state
from binarize.methods.xnor import XnorConfig
from binarize.models import resnet_small

TINY_KWARGS = {"widths": [16, 16], "blocks": [1, 1]}


@pytest.fixture
def student_file(tmp_path):
    config = XnorConfig()
    student = convert(resnet_small(**TINY_KWARGS), config)
    path = tmp_path / "student.pt"
    ckpt.atomic_save(ckpt.student_checkpoint(student, ckpt.make_recipe("binarize.models:resnet_small", config,
                                                                       None, **TINY_KWARGS)), path)
    return path


def test_a_flipped_byte_in_a_tensor_is_detected(student_file):
    original = torch.load(student_file, weights_only=True)
    weight = original["model"]["3.conv1.weight"]  # the first block's conv: binary, 8x4x3x3 floats
    raw = bytearray(student_file.read_bytes())
    offset = bytes(raw).find(weight.numpy().tobytes())
    assert offset > 0 and bytes(raw).count(weight.numpy().tobytes()) == 1
    raw[offset + 2] ^= 0x10
    student_file.write_bytes(bytes(raw))
    # torch itself reads the damaged file without complaint, with a changed weight:
    damaged = torch.load(student_file, weights_only=True)["model"]["3.conv1.weight"]
    assert not torch.equal(damaged, weight)
    with pytest.raises(ckpt.CheckpointError, match="damaged") as err:
        ckpt.load_checkpoint(student_file)
    assert str(student_file) in str(err.value)


def test_digest_covers_tensor_bytes_dtypes_and_plain_data():
    data = {"model": {"w": torch.tensor([1.0, 2.0])}, "epoch": 3, "lr": 0.1, "names": ["a", "b"], "none": None}
    digest = ckpt.content_digest(data)
    changes = [
        {**data, "model": {"w": torch.cat([torch.tensor([1.0]), torch.nextafter(torch.tensor([2.0]), torch.tensor(3.0))])}},
        {**data, "model": {"w": torch.tensor([1.0, 2.0], dtype=torch.float64)}},
        {**data, "model": {"w": torch.tensor([[1.0, 2.0]])}},
        {**data, "epoch": 4},
        {**data, "lr": math.nextafter(0.1, 1.0)},
        {**data, "names": ["a", "c"]},
        {**data, "epoch": "3"},
    ]
    for changed in changes:
        assert ckpt.content_digest(changed) != digest
    same_order_free = dict(reversed(list(data.items())))
    assert ckpt.content_digest(same_order_free) == digest


def test_every_saved_checkpoint_carries_its_checksum_and_older_files_still_load(student_file, tmp_path):
    assert len(torch.load(student_file, weights_only=True)[ckpt.CHECKSUM_KEY]) == 64
    assert ckpt.CHECKSUM_KEY not in ckpt.load_checkpoint(student_file)  # verified and removed
    older = tmp_path / "older.pt"
    data = torch.load(student_file, weights_only=True)
    del data[ckpt.CHECKSUM_KEY]
    torch.save(data, older)  # as written before checksums existed
    assert ckpt.load_student(older)[1]["recipe"]["model"] == "binarize.models:resnet_small"


def _mutate(data, change):
    change(data)
    return data


STRUCTURE_DAMAGE = [
    ("kind", lambda d: d.update(kind="weights"), "kind"),
    ("model a list", lambda d: d.update(model=[1, 2]), "'model'"),
    ("model not tensors", lambda d: d["model"].update({"3.conv1.weight": "x"}), "state_dict"),
    ("recipe a string", lambda d: d.update(recipe="resnet"), "'recipe'"),
    ("recipe without convert", lambda d: d["recipe"].pop("convert"), "lacks 'convert'"),
    ("convert without method", lambda d: d["recipe"]["convert"].pop("method"), "'method'"),
    ("model kwargs a list", lambda d: d["recipe"].update(model_kwargs=[1]), "'model_kwargs'"),
    ("bad input size", lambda d: d["recipe"].update(input_size=[1, 28]), "input_size"),
    ("unknown option", lambda d: d["recipe"]["convert"]["options"].update(no_such_option=1), "no_such_option"),
    ("unknown method", lambda d: d["recipe"]["convert"].update(method="nope"), "nope"),
    ("model kwarg the factory lacks", lambda d: d["recipe"]["model_kwargs"].update(depth=3), "depth"),
]


@pytest.mark.parametrize("label, change, words", STRUCTURE_DAMAGE, ids=[d[0] for d in STRUCTURE_DAMAGE])
def test_wrong_structure_is_a_checkpoint_error_naming_file_and_entry(student_file, label, change, words):
    data = _mutate(ckpt.load_checkpoint(student_file), change)
    ckpt.atomic_save(data, student_file)  # a consistent checksum: only the structure is wrong
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.load_student(student_file)
    assert str(student_file) in str(err.value) and words in str(err.value)


def test_training_state_entries_are_checked(student_file, tmp_path):
    data = ckpt.load_checkpoint(student_file)
    state = dict(data, kind="finetune", version=STATE_VERSION, config={}, phases=[], phase=0, epoch="1", step=0,
                 optimizers={}, discriminators={}, epoch_order=None, history={}, epoch_stats={},
                 rng=[dict(ckpt.rng_state(), loader={})])
    path = tmp_path / "state.pt"
    ckpt.atomic_save(state, path)
    with pytest.raises(ckpt.CheckpointError, match="'epoch' is a str, expected int"):
        read_training_state(path)
    del state["optimizers"]
    state["epoch"] = 1
    ckpt.atomic_save(state, path)
    with pytest.raises(ckpt.CheckpointError, match="lacks the 'optimizers' entry"):
        read_training_state(path)
    state["optimizers"] = {}
    state["rng"].append({"torch": torch.get_rng_state(), "numpy": {"kind": "MT19937"}, "python": {}, "loader": {}})
    ckpt.atomic_save(state, path)
    with pytest.raises(ckpt.CheckpointError, match="'rng' of rank 1 lacks a complete 'numpy' random state"):
        read_training_state(path)
    state["rng"][1] = ckpt.rng_state()
    ckpt.atomic_save(state, path)
    with pytest.raises(ckpt.CheckpointError, match="'rng' of rank 1 lacks the train loader's generator states"):
        read_training_state(path)
    state["rng"][1]["loader"] = {}
    ckpt.atomic_save(state, path)
    assert read_training_state(path)["epoch"] == 1
