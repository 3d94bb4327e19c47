import pytest

from llm_meta.data.episodes import EpisodeSampler
from llm_meta.data.tasks import TaskError, load_task


@pytest.fixture(scope="module")
def small_task(tmp_path_factory):
    rows = [f"class {c} example {i},c{c}" for c in range(6) for i in range(4 + 2 * c)]  # c0: 4 texts ... c5: 14
    f = tmp_path_factory.mktemp("ep") / "toy.csv"
    f.write_text("text,label\n" + "\n".join(rows) + "\n")
    return load_task(str(f))


def test_shapes_labels_and_disjointness(small_task):
    sampler = EpisodeSampler([small_task], n_way=3, k_shot=2, q_query=3, seed=1)
    for ep in sampler.episodes(20):
        assert ep.n_way == 3 and len(ep.support) == 6 and len(ep.query) == 9
        assert sorted(set(ep.support.labels)) == [0, 1, 2] and ep.support.labels.count(0) == 2
        assert ep.query.labels.count(2) == 3
        assert not set(ep.support.texts) & set(ep.query.texts)
        for texts, labels in ((ep.support.texts, ep.support.labels), (ep.query.texts, ep.query.labels)):
            for text, y in zip(texts, labels):  # label index points at the text's true class
                assert text.startswith(f"class {ep.label_names[y][1:]} ")


def test_same_seed_same_episodes_any_order(small_task):
    a = EpisodeSampler([small_task], 3, 2, 3, seed=7)
    b = EpisodeSampler([small_task], 3, 2, 3, seed=7)
    forward = [a.episode(i).fingerprint() for i in range(10)]
    backward = [b.episode(i).fingerprint() for i in reversed(range(10))][::-1]
    assert forward == backward
    assert forward != [EpisodeSampler([small_task], 3, 2, 3, seed=8).episode(i).fingerprint() for i in range(10)]
    assert len(set(forward)) == 10


def test_small_classes_are_skipped_with_one_warning(small_task, caplog):
    sampler = EpisodeSampler([small_task], n_way=3, k_shot=4, q_query=4, seed=0)  # needs 8: c0, c1 too small
    assert "skipping 2 class(es) with fewer than K+Q=8 examples: c0, c1" in caplog.text
    assert caplog.text.count("skipping") == 1
    for ep in sampler.episodes(10):
        assert not {"c0", "c1"} & set(ep.label_names)


def test_too_few_classes_is_an_error(small_task):
    with pytest.raises(TaskError, match="has 2 class\\(es\\) with at least K\\+Q=12 examples; 3-way episodes need 3"):
        EpisodeSampler([small_task], n_way=3, k_shot=6, q_query=6)
    with pytest.raises(TaskError, match="8-way episodes need 8"):
        EpisodeSampler([small_task], n_way=8, k_shot=1, q_query=1)


def test_many_tasks_and_class_roles():
    hwu, mcid = load_task("hwu"), load_task("mcid")
    sampler = EpisodeSampler([hwu], 5, 1, 2, class_role="meta_val", seed=0)
    val_classes = set(hwu.classes("meta_val"))
    assert all(set(ep.label_names) <= val_classes for ep in sampler.episodes(10))
    mixed = EpisodeSampler([hwu, mcid], 5, 1, 2, weighting="size", seed=0)
    counts = {"hwu": 0, "mcid": 0}
    for ep in mixed.episodes(200):
        counts[ep.task] += 1
    assert counts["hwu"] > 3 * counts["mcid"] > 0  # hwu has ~6x the rows


def test_cap_way_gives_full_way_episodes_of_a_smaller_task(small_task, tmp_path):
    with pytest.raises(TaskError, match="8-way episodes need 8"):
        EpisodeSampler([small_task], n_way=8, k_shot=2, q_query=2)
    capped = EpisodeSampler([small_task], n_way=8, k_shot=2, q_query=2, cap_way=True)  # 6 usable classes
    assert {ep.n_way for ep in capped.episodes(5)} == {6}
    big = tmp_path / "big.csv"
    big.write_text("text,label\n" + "\n".join(f"big {c} text {i},b{c}" for c in range(10) for i in range(4)) + "\n")
    mixed = EpisodeSampler([small_task, load_task(str(big))], n_way=8, k_shot=2, q_query=2, cap_way=True)
    ways = {(ep.task, ep.n_way) for ep in mixed.episodes(20)}
    assert ways == {("toy", 6), ("big", 8)}  # the larger task still gets the asked 8-way episodes
    with pytest.raises(TaskError, match="1 class"):  # fewer than 2 usable classes is still an error
        EpisodeSampler([small_task], n_way=8, k_shot=7, q_query=7, cap_way=True)
