import numpy as np
import pytest

from moopt.errors import ConfigError
from moopt.search.objectives import parse_objectives


def test_multi_objective_weights_are_normalised():
    o = parse_objectives("multi:eval_loss,eval_accuracy", "0.7,0.3")
    assert o.names == ("eval_loss", "eval_accuracy") and o.multi
    assert o.weights == pytest.approx((0.7, 0.3))
    assert list(o.to_minimize({"eval_loss": 1.5, "eval_accuracy": 0.8})) == [1.5, -0.8]


@pytest.mark.parametrize("objective, weights, fragment", [
    ("multi:eval_loss,eval_accuracy", "1", "1 weight for 2 objectives"),
    ("multi:eval_loss,eval_accuracy", "0.5,-1", "must be finite, >= 0"),
    ("multi:eval_loss", None, "at least two objectives"),
    ("multi:eval_loss,bleu", None, "unknown objective(s) ['bleu']"),
    ("multi:eval_loss,eval_accuracy", "a,b", "comma-separated numbers"),
])
def test_bad_objectives_are_refused(objective, weights, fragment):
    with pytest.raises(ConfigError, match=None) as e:
        parse_objectives(objective, weights)
    assert fragment in str(e.value)


def test_progress_score_runs_from_base_model_to_ideal():
    o = parse_objectives("multi:eval_loss,eval_accuracy", "0.7,0.3")
    base = o.to_minimize({"eval_loss": 8.0, "eval_accuracy": 0.2})
    F = np.array([o.to_minimize({"eval_loss": 4.0, "eval_accuracy": 0.6}),  # halfway on both
                  o.to_minimize({"eval_loss": 9.0, "eval_accuracy": 0.2}),  # worse than the base model
                  o.to_minimize({"eval_loss": 0.0, "eval_accuracy": 1.0})])  # ideal
    p = o.progress(F, base)
    assert p[0] == pytest.approx([0.5, 0.5])
    assert p[1][0] == pytest.approx(-1 / 8) and p[1][1] == pytest.approx(0.0)
    assert o.score(F, base) == pytest.approx([0.5, 0.7 * -1 / 8, 1.0])
    # the same trial scores the same whatever else the study holds (unlike the rank score)
    assert o.score(F[:1], base) == pytest.approx(o.score(F, base)[:1])
