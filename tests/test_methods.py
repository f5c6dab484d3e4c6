"""Method presets: values per dataset and setting (the authors' scripts), overrides, errors."""

import dataclasses

import pytest

from lgkd_core.methods import PRESETS, MethodConfig, get_method
from lgkd_core.tasks import list_tasks


def test_preset_names_and_case_insensitivity():
    assert set(PRESETS) == {
        *("FT", "Joint", "LwF", "LwF-MC", "ILT", "EWC", "PI", "RW"),
        *("MiB", "PLOP", "LGKD", "MiB+LGKD"),
    }
    assert get_method("lwf", "voc", "15-1").name == "LwF"
    assert get_method("lwf-mc", "voc", "15-1").name == "LwF-MC"
    assert get_method("LWF-MC", "voc", "15-1").name == "LwF-MC"  # the reference's spelling
    assert get_method("mib+lgkd", "voc", "15-1").name == "MiB+LGKD"
    assert get_method("LGKD", "voc", "15-1") == get_method("lgkd", "voc", "15-1")


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ValueError, match="FT, Joint, LwF, LwF-MC, ILT, EWC, PI, RW, MiB"):
        get_method("SDR", "voc", "15-1")


def test_unknown_override_lists_valid_keys():
    with pytest.raises(ValueError, match=r"'pod_factr'.*valid keys:.*pod_factor"):
        get_method("PLOP", "voc", "15-1", {"pod_factr": 0.1})
    with pytest.raises(ValueError, match="median"):
        get_method("PLOP", "voc", "15-1", {"median": "approximate"})


def test_baseline_presets():
    ft = get_method("FT", "voc", "15-1")
    assert (ft.ce_type, ft.kd_type, ft.pod, ft.pseudo, ft.loss_de) == ("ce", None, False, None, 0)
    assert not ft.needs_features and not ft.uses_kd
    lwf = get_method("LwF", "voc", "15-1")
    assert (lwf.kd_type, lwf.loss_kd, lwf.needs_features) == ("kd", 100, False)
    ilt = get_method("ILT", "voc", "15-1")
    assert (ilt.kd_type, ilt.loss_kd, ilt.loss_de, ilt.needs_features) == ("kd", 100, 100, True)
    mib = get_method("MiB", "ade", "100-50")
    assert (mib.ce_type, mib.kd_type, mib.loss_kd, mib.init_balanced) == ("unce", "unkd", 10, True)
    assert mib.pseudo is None and not mib.pod and not mib.needs_features


@pytest.mark.parametrize("dataset", ["voc", "ade"])
def test_plop_uses_voc_pod_weights_everywhere(dataset):
    m = get_method("PLOP", dataset, "100-50" if dataset == "ade" else "15-1")
    assert (m.pod, m.pod_factor, m.pod_logits_factor) == (True, 0.01, 0.0005)
    assert (m.pseudo, m.pseudo_threshold, m.adaptive_factor) == ("entropy", 0.001, True)
    assert (m.kd_type, m.ce_type, m.init_balanced, m.median) == (None, "ce", True, "reference")
    assert m.needs_features


@pytest.mark.parametrize(
    ("dataset", "task", "prev", "novel"),
    [
        ("voc", "15-1", 1, 0),
        ("voc", "15-5s", 1, 0),
        ("voc", "15-5s_b", 1, 0),
        ("voc", "10-1", 1, 0),
        ("voc", "15-5", 5, 1),
        ("voc", "19-1", 5, 0.5),
        ("synthetic", "15-1", 1, 0),
        ("synthetic", "19-1", 5, 0.5),
        ("ade", "100-50", 1, 20),
        ("ade", "100-10", 1, 1),
        ("ade", "100-5", 1, 1),
        ("ade", "50-50", 2, 10),
        ("ade", "50", 2, 10),
    ],
)
def test_lgkd_weights_per_setting(dataset, task, prev, novel):
    m = get_method("LGKD", dataset, task)
    assert (m.prev_kd, m.novel_kd) == (prev, novel)
    assert (m.kd_type, m.loss_kd, m.alpha) == ("lgkd", 1, 1)


def test_lgkd_pod_weights_per_dataset():
    voc = get_method("LGKD", "voc", "15-1")
    ade = get_method("LGKD", "ade", "100-50")
    syn = get_method("LGKD", "synthetic", "15-1")
    assert (voc.pod_factor, voc.pod_logits_factor) == (0.01, 0.0005)
    assert (syn.pod_factor, syn.pod_logits_factor) == (0.01, 0.0005)
    assert (ade.pod_factor, ade.pod_logits_factor) == (0.001, 0.00001)
    assert ade.pseudo == "entropy" and ade.adaptive_factor and ade.init_balanced


def test_every_voc_and_ade_setting_resolves():
    for dataset in ("voc", "ade"):
        for task in list_tasks(dataset):
            assert get_method("LGKD", dataset, task).kd_type == "lgkd"


def test_every_field_is_overridable():
    values = {
        "ce_type": "unce",
        "kd_type": "kd",
        "loss_kd": 3.0,
        "prev_kd": 7.0,
        "novel_kd": 0.25,
        "alpha": 2.0,
        "loss_de": 4.0,
        "pod": False,
        "pod_factor": 0.5,
        "pod_logits_factor": 0.25,
        "pod_scales": [1, 2],
        "pseudo": None,
        "pseudo_threshold": 0.01,
        "pseudo_bins": 50,
        "median": "exact",
        "adaptive_factor": False,
        "init_balanced": False,
        "icarl": 2.0,
        "regularizer": "rw",
        "reg_importance": 5.0,
        "reg_alpha": 0.5,
        "reg_normalize": False,
        "reg_iterations": 3,
    }
    fields = {f.name for f in dataclasses.fields(MethodConfig)} - {"name"}
    assert set(values) == fields
    m = get_method("LGKD", "ade", "100-50", values)
    for key, value in values.items():
        assert getattr(m, key) == (tuple(value) if key == "pod_scales" else value), key
    assert m.name == "LGKD"


def test_configs_are_frozen():
    m = get_method("LGKD", "voc", "15-1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.prev_kd = 3.0  # type: ignore[misc]


def test_needs_features():
    assert get_method("LGKD", "voc", "15-1", {"pod": False}).needs_features  # small logits
    assert not get_method("LGKD", "voc", "15-1", {"pod": False, "loss_kd": 0}).needs_features
    assert get_method("FT", "voc", "15-1", {"loss_de": 1.0}).needs_features
