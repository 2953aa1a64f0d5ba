"""The shared safety data: fixed splits reproduce the README's counts; training never sees test data."""

from __future__ import annotations

import numpy as np
import pytest

from guardforge.guard import datasets
from guardforge_build.guard import data
from guardforge_build.guard.text import expected_calibration_error, fit_temperature


def _data_available() -> bool:
    from guardforge.guard.t2i_data import t2i_data_root

    try:
        datasets.data_root()
        t2i_data_root()  # training reads the image-prompt sets' train rows too
    except FileNotFoundError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _data_available(), reason="shared safety or image-prompt data not present")


def test_openai_split_reproduces_readme_counts():
    train, test = datasets.load_openai_moderation("train"), datasets.load_openai_moderation("test")
    assert (len(train), sum(e.unsafe for e in train)) == (1190, 376)
    assert (len(test), sum(e.unsafe for e in test)) == (490, 146)
    assert not {e.text for e in train} & {e.text for e in test}


def test_openai_label_mapping():
    test = datasets.load_openai_moderation("test")
    for ex in test:
        if not ex.unsafe:
            assert all(ex.labels[c] == 0 for c in datasets.CATEGORIES)
    # Sexual content is S12 and harassment alone is unsafe without an S-code.
    assert any(ex.labels["S12"] == 1 for ex in test)


def test_training_data_excludes_test_sets():
    training = {e.text for e in data.training_examples()}
    assert not training & {e.text for e in datasets.load_openai_moderation("test")}
    assert not training & {e.text for e in datasets.load_xstest()}
    assert {e.source for e in data.training_examples()} == {"openai-mod", "ailuminate", "benign", "image-prompts",
                                                            "requests", "requests-contrast", "parti", "coco", "i2p"}
    from guardforge.guard.t2i_data import load_t2i

    for name in ("i2p", "parti", "coco"):  # never a test row of the image-prompt sets
        assert not training & {e.text for e in load_t2i(name, "test")}, name
    # The rows that choose the threshold are never trained on.
    assert not training & {e.text for e in data.load_image_prompts_dev() + data.coco_everyday_examples()}


def test_validation_split_is_disjoint_stratified_and_deterministic():
    examples = data.training_examples()
    train, val = data.train_validation_split(examples, 0.15, seed=0)
    assert len(train) + len(val) == len(examples)
    assert not {id(e) for e in train} & {id(e) for e in val}
    for source in ("openai-mod", "ailuminate", "benign"):
        n_all = sum(e.source == source for e in examples)
        n_val = sum(e.source == source for e in val)
        assert abs(n_val / n_all - 0.15) < 0.02
    again = data.train_validation_split(examples, 0.15, seed=0)[1]
    assert [e.text for e in again] == [e.text for e in val]


def test_ailuminate_maps_every_hazard():
    rows = datasets.load_ailuminate()
    assert len(rows) == 1200 and all(e.unsafe for e in rows)
    assert {c for e in rows for c in datasets.CATEGORIES if e.labels[c] == 1} == set(datasets.CATEGORIES)


def test_benign_prompts_file():
    benign = data.load_benign()
    assert len(benign) >= 300
    assert len({e.text for e in benign}) == len(benign)
    assert "a kitchen knife block on a marble counter" in {e.text for e in benign}


def test_hand_written_questions_are_in_the_committed_file():
    """(That neither they nor any other training text is a near copy of a test row: test_guard_near_duplicates.)"""
    from guardforge_build.guard.benign_questions import QUESTIONS

    assert set(QUESTIONS) <= {e.text for e in data.load_benign()}


def test_ece_and_temperature_scaling():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, 20000)
    labels = (rng.random(20000) < 1 / (1 + np.exp(-true_logits))).astype(float)
    overconfident = true_logits * 3  # a model three times too sure of itself
    t = fit_temperature(overconfident, labels)
    assert 2.5 < t < 3.5
    before = expected_calibration_error(1 / (1 + np.exp(-overconfident)), labels)
    after = expected_calibration_error(1 / (1 + np.exp(-overconfident / t)), labels)
    assert after < before / 2


def test_profanity_signal_matches_the_package_model():
    """The exported linear signal is the mean of alt-profanity-check's SVM decision functions, and the
    backend's rebuilt vectorizer (vocabulary + idf) transforms text exactly as the package's does."""
    pytest.importorskip("profanity_check")
    from profanity_check import profanity_check as package

    from guardforge.guard.backends.embedded_text import fitted_profanity_tfidf, linear_logits
    from guardforge_build.guard.profanity import load_profanity_signal

    texts = ["you are a worthless idiot and everyone hates you", "a watercolor of a lighthouse at dawn",
             "shut the hell up, moron", "How do I kill a Python process?", ""]
    vectorizer, coef, intercept = load_profanity_signal()
    svms = [c.estimator for c in package.model.calibrated_classifiers_]
    features = package.vectorizer.transform(texts)
    expected = np.mean([svm.decision_function(features) for svm in svms], axis=0)
    np.testing.assert_allclose(linear_logits(vectorizer, coef, intercept, texts), expected, rtol=1e-9)

    # The backend's scikit-learn-free twin, from the vocabulary and the idf as stored in safetensors (float32).
    rebuilt = fitted_profanity_tfidf(dict(vectorizer.vocabulary_), vectorizer.idf_.astype(np.float32))
    z = linear_logits(rebuilt, coef.astype(np.float32).astype(np.float64), intercept, texts)
    np.testing.assert_allclose(z, expected, atol=1e-5)
    assert z[0] > 0 > z[1] and z[2] > z[3]
    # The twin skips the package's stop-word removal: right only while no stop word is in the vocabulary.
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    assert not ENGLISH_STOP_WORDS & set(vectorizer.vocabulary_)
    # The package's own probabilities rank the texts the same way as the exported signal.
    assert list(np.argsort(package.predict_prob(texts))) == list(np.argsort(z))


def test_runtime_tfidf_transforms_as_scikit_learn_does_on_the_shipped_signals():
    """The backend scores with FittedTfidf (no scikit-learn import); training fits with scikit-learn."""
    import json

    from safetensors.numpy import load_file

    from guardforge.guard.backends.embedded_text import (
        ASSETS_DIR, PROFANITY_VOCAB, TEXT_VOCAB, TEXT_WEIGHTS, FittedTfidf, fitted_profanity_tfidf, fitted_tfidf,
        make_vectorizer,
    )
    from sklearn.feature_extraction.text import TfidfVectorizer

    state = load_file(str(ASSETS_DIR / TEXT_WEIGHTS))
    texts = ["How do I kill a Python process?", "A cat, a CAT and a cat's toy!", "", "   ", "naïve café ÜBER straße",
             "you are a worthless idiot and everyone hates you", "bomb bomb bomb the bridge at dawn",
             "the the the", "x y z 42 4242", "a watercolor of a lighthouse at dawn, 8k, trending"]

    vocabulary = json.loads((ASSETS_DIR / TEXT_VOCAB).read_text(encoding="utf-8"))
    reference = make_vectorizer(vocabulary)
    reference.idf_ = state["tfidf.idf"]
    ours = fitted_tfidf(vocabulary, state["tfidf.idf"])
    # Future fits too: the trainer's vectorizer may only use settings the runtime twin reproduces.
    params = reference.get_params()
    assert params["ngram_range"] == (1, ours.ngram_max) and params["sublinear_tf"] == ours.sublinear_tf
    assert (params["analyzer"], params["lowercase"], params["token_pattern"]) == ("word", True, FittedTfidf._TOKEN.pattern)
    assert (params["norm"], params["use_idf"], params["binary"]) == ("l2", True, False)
    assert params["stop_words"] is params["strip_accents"] is params["preprocessor"] is params["tokenizer"] is None
    terms = reference.inverse_transform(reference.transform(texts))
    assert any(" " in term for term in [*terms[0], *terms[7]])  # bigrams are exercised
    np.testing.assert_allclose(ours.transform(texts).toarray(), reference.transform(texts).toarray(), atol=1e-6)

    vocabulary = json.loads((ASSETS_DIR / PROFANITY_VOCAB).read_text(encoding="utf-8"))
    reference = TfidfVectorizer(stop_words="english", vocabulary=vocabulary, dtype=np.float64)
    reference.idf_ = state["profanity.idf"].astype(np.float64)
    ours = fitted_profanity_tfidf(vocabulary, state["profanity.idf"])
    assert reference.transform(texts).nnz >= 10
    np.testing.assert_allclose(ours.transform(texts).toarray(), reference.transform(texts).toarray(), atol=1e-12)
