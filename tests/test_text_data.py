"""``load_docstrings``: an offline, deterministic character corpus for the transformer."""

import numpy as np
import pytest

from companion import data


def test_windows_predict_the_next_character():
    corpus = data.load_docstrings(context=16)
    assert corpus.x_train.shape[1] == corpus.y_train.shape[1] == 16
    assert corpus.x_train.dtype == np.int64
    text = "".join(corpus.vocabulary[i] for i in corpus.x_train[:3].ravel())
    assert len(text) == 48
    # y is x shifted by one, within and across consecutive windows
    np.testing.assert_array_equal(corpus.y_train[:, :-1], corpus.x_train[:, 1:])
    np.testing.assert_array_equal(corpus.y_train[:-1, -1], corpus.x_train[1:, 0])
    assert set(np.unique(corpus.x_train)) <= set(range(len(corpus.vocabulary)))
    assert corpus.vocabulary == "".join(sorted(set(corpus.vocabulary)))


def test_the_test_text_follows_the_training_text():
    corpus = data.load_docstrings(context=32, test_fraction=0.25)
    n = len(corpus.x_train) + len(corpus.x_test)
    assert len(corpus.x_test) == n - round(n * 0.75)
    np.testing.assert_array_equal(corpus.y_train[-1, -1], corpus.x_test[0, 0])


def test_the_corpus_is_deterministic_and_printable():
    a, b = data.load_docstrings(8), data.load_docstrings(8)
    for left, right in zip(a[:4], b[:4]):
        np.testing.assert_array_equal(left, right)
    assert all(c == "\n" or " " <= c <= "~" for c in a.vocabulary)
    assert len(a.x_train) * 8 > 20_000  # a corpus, not a sentence


@pytest.mark.parametrize("kwargs, error", [({"context": 0}, ValueError),
                                           ({"context": 2.5}, (TypeError, ValueError)),
                                           ({"test_fraction": 1.0}, ValueError),
                                           ({"test_fraction": "0.1"}, TypeError),
                                           ({"context": 10 ** 9}, ValueError)])
def test_bad_arguments_are_refused(kwargs, error):
    with pytest.raises(error):
        data.load_docstrings(**kwargs)
