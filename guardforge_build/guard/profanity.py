"""A third signal for the text guard: the linear profanity model of PyPI `alt-profanity-check`.

That package ships a word TF-IDF and five sigmoid-calibrated linear SVMs trained on about 200k
human-labelled toxic and clean comments: abuse and slurs, which the OpenAI moderation set is full of and
which our training data (harmful requests, image prompts) barely has. Its model is linear, so the mean of
the five SVM decision functions is one weight vector over its vocabulary; we export that (vocabulary, idf,
weights, intercept) into our own assets at training time. The backend then scores it with its own TF-IDF
transform (`FittedTfidf`) and needs neither the package, its pickles nor scikit-learn at run time.
"""

from __future__ import annotations

import numpy as np


def load_profanity_signal():
    """(vectorizer, coef, intercept) of the installed alt-profanity-check model, its SVMs averaged."""
    try:
        from profanity_check import profanity_check as package
    except ImportError as exc:
        raise RuntimeError("the profanity signal needs the training extra: pip install alt-profanity-check") from exc

    svms = [c.estimator for c in package.model.calibrated_classifiers_]
    coef = np.mean([svm.coef_[0] for svm in svms], axis=0)
    intercept = float(np.mean([svm.intercept_[0] for svm in svms]))
    return package.vectorizer, coef, intercept
